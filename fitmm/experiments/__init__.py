"""What the book's notebooks call: runs (train or reuse, records as DataFrames), user and item
groups and sparsification, paired significance, tables, cost, data and spectral checks, claims.

Notebooks stay thin: they call these functions, then plot and tabulate. `profiles.yaml`
holds the parameters of each reproduce profile (smoke, cpu, gpu).
"""

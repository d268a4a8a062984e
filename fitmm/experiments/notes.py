"""What a notebook shows besides tables and figures: notes, the data caveats, and numbers for the text.

A notebook's markdown cites numbers only through `glue_text` keys (`{glue:text}` in MyST),
so every number in the book's prose is computed by the run that produced the page.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from IPython.display import Markdown, display

AMAZON = ("baby", "sports", "clothing")

# From ../shared/data/README.md: stated wherever results on these sets are shown.
CAVEATS = {
    "amazon split": "The Amazon interaction sets equal the published ones (users, items, pairs), but the "
                    "train/valid/test labels are a re-draw under MMRec's split rule, not the official labels: split "
                    "sizes match the official ones for Baby; per-user labels differ. Results are comparable to "
                    "published numbers up to split variance.",
    "amazon features": "The official image (4096-d) and text (384-d) feature files could not be obtained here. "
                       "Multimodal models on Amazon can only use a text modality rebuilt from `item_text.tsv` "
                       "(partial for Baby, attributes only for Sports), and that is a different input from the papers'. "
                       "With one content modality, FITMM's and SSR's representations have two blocks there (id and "
                       "text) instead of three, and SSR runs without its cross-modal contrastive term.",
    "tiktok text": "TikTok's text features (768-d in its original release) are not included: models see the "
                   "128-d image and 128-d audio features only, while the published TikTok numbers also used text.",
}
SYNTHETIC = ("Synthetic benchmark (planted spectral structure, `fitmm.data.synthetic`): the truth is known, "
             "but these numbers say nothing about the papers' datasets.")


def note(lines: str | Iterable[str], kind: str = "note", title: str | None = None) -> None:
    """Display a MyST admonition (`note`, `warning`, ...) holding one paragraph or a bullet list."""
    body = lines if isinstance(lines, str) else "\n".join(f"- {line}" for line in lines)
    head = f"```{{admonition}} {title}\n:class: {kind}" if title else f"```{{{kind}}}"
    display(Markdown(f"{head}\n{body}\n```"))


def caveats(datasets: Iterable[str]) -> list[str]:
    """The caveats that apply to results on `datasets` (dataset names, e.g. 'baby', 'tiktok', 'synthetic')."""
    names = set(datasets)
    out = []
    if names & set(AMAZON):
        out += [CAVEATS["amazon split"], CAVEATS["amazon features"]]
    if "tiktok" in names:
        out.append(CAVEATS["tiktok text"])
    if any(n.startswith("synthetic") for n in names):
        out.append(SYNTHETIC)
    return out


def show_caveats(datasets: Iterable[str]) -> None:
    """The data caveats as a warning box (real data) or a note (synthetic only)."""
    lines = caveats(datasets)
    real = any(not line.startswith("Synthetic") for line in lines)
    note(lines, "warning" if real else "note", "Data caveats" if real else "Data")


def literal(text: str) -> str:
    """Plain text (an error message, a command) for markdown: outside `code spans`, '<' is not taken for an HTML tag
    nor '--' for a dash.

    >>> print(literal("a <modality>_feat.npy file; use --set x=1, or `fitmm tune --trials 5`"))
    a &lt;modality>_feat.npy file; use -\\-set x=1, or `fitmm tune --trials 5`
    """
    parts = text.split("`")
    parts[::2] = [p.replace("<", "&lt;").replace("--", "-\\-") for p in parts[::2]]
    return "`".join(parts)


def show_skipped(notes: list[str]) -> None:
    """Runs or models that were skipped, as a visible note (nothing when the list is empty)."""
    if notes:
        note([literal(n) for n in notes], "note", "Skipped here")


def fmt(value, spec: str = ".4f") -> str:
    """A number formatted for the text; a string (e.g. 'pending') as it is; NaN as 'n/a'."""
    if isinstance(value, str):
        return value
    if value is None or value != value:
        return "n/a"
    return format(value, spec)


def per_dataset(parts: Mapping[str, str], order: Sequence[str] = (), empty: str = "n/a") -> str:
    """One clause per dataset for an answer's text, those named in `order` first and in that order; `empty` when
    there is none.

    >>> per_dataset({"baby": "+0.0009", "tiktok": "-0.0200"}, ["tiktok", "baby"]), per_dataset({})
    ('tiktok -0.0200; baby +0.0009', 'n/a')
    """
    datasets = [d for d in order if d in parts] + [d for d in parts if d not in order]
    return "; ".join(f"{dataset} {parts[dataset]}" for dataset in datasets) or empty


def glue_text(name: str, value, spec: str = ".4f") -> None:
    """Glue `fmt(value, spec)` under `name` for `{glue:text}` in the notebook's markdown (not displayed)."""
    from myst_nb import glue

    glue(name, fmt(value, spec), display=False)


def markdown_table(frame) -> str:
    """A MyST pipe table of a DataFrame (index as the first column); cells may hold MyST links."""
    cells = [[str(i), *map(str, row)] for i, row in zip(frame.index, frame.itertuples(index=False))]
    header = [frame.index.name or "", *map(str, frame.columns)]
    escape = lambda c: c.replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(escape, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in cells]
    return "\n".join(lines)

from fitmm.cli import main

raise SystemExit(main())

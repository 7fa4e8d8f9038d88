from llamaforge_tui.cli import main

raise SystemExit(main())

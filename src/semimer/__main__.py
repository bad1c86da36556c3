from semimer.cli import main

raise SystemExit(main())

from faceage.cli import main

raise SystemExit(main())

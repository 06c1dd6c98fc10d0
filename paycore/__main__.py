from paycore.cli import main

raise SystemExit(main())

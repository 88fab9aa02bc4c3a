from billing_worker.cli import main

raise SystemExit(main())

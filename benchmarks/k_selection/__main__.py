from benchmarks.k_selection.runner import main

raise SystemExit(main())

"""``python -m adapruner_lightning.cli <command>``: the same dispatcher as the ``adapruner`` console script."""

import sys

from adapruner_lightning.cli.main import main

sys.exit(main())

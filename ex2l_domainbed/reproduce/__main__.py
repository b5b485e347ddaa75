import sys

from ex2l_domainbed.reproduce.cli import main

sys.exit(main())

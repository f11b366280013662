"""``python -m rqsup.cli ...``"""

from rqsup.cli.main import main

main()

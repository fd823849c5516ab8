"""Sub-commands of the ``meddeeprecog`` command line, one module each (see ``cli.COMMANDS``)."""

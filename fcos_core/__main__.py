from fcos_core.cli.main import entry

entry()

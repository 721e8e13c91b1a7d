"""Placeholder: commands are added by the module's owner."""


def register(main, bench):
    pass

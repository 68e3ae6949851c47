"""One module per config group of ``mrpo-train``: its typed settings with the domain of every
field declared next to it, ``check`` (raising :class:`~mrpo.errors.ConfigError` naming the
key) and ``build`` (the objects the run uses). :mod:`mrpo.config.schema` composes the groups'
settings into the primary config; :mod:`mrpo.cli.train` calls their builds in order.
"""

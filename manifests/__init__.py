"""Reference manifests (class lists, Parquet schema documents), shipped as ``augment.manifests``.

Read them with :mod:`augment.resources`; this file only makes the folder an importable package so
that :mod:`importlib.resources` finds it from an editable install and from a wheel alike.
"""

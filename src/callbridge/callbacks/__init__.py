"""The built-in neutral callbacks, one module each.

Nothing is imported here: the registry names each built-in by import string,
so that ``import callbridge`` stays free of every framework and heavy library.
"""

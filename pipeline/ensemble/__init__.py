"""Ensembles: several encoders of one modality combined into one signal.

:mod:`.combine` holds the arithmetic (weighted concatenation, fold averaging) and loads members'
encoders; :mod:`.members` reads which saved encoders an ensemble run or a plain run uses.
"""

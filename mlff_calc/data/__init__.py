"""The bottom layer: data formats, readers and writers; no teachers, no models, no MD.

``schema`` (the HDF5 layout), ``reader``, ``journal`` (the crash-safe writer), ``hdf5`` (all three in one
import), ``convert`` (extxyz <-> HDF5, merging shards), ``structures`` (structure files), ``torch_dataset``.
Sampling and labelling, which drive teachers and MD, live in :mod:`mlff_calc.workflow`.
"""

"""Datasets: HDF5 storage (``hdf5``), torch datasets (``torch_dataset``), sampling and labelling."""

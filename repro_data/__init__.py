"""Scripts that put the data sets and foundation models in place (run by hand).

A package only so that the benchmark and the tests can import ``repro_data.fetch``, which
also knows where the shared folder and its mirror are (:func:`repro_data.fetch.shared_folder`).
"""

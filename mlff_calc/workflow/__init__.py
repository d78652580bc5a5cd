"""The workflow layer: sampling (teacher-driven MD, rattles, strains) and labelling (teacher -> dataset).

It sits above ``data/`` (formats, readers, writers), ``teachers/`` and ``md``/``blowup``, and below
``pipeline/`` and the CLI.
"""

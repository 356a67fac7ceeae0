"""Reports: a study's MLflow runs -> tidy DataFrame (tidy) -> paired statistics (stats) ->
figures (figures) and sections (sections) -> reports/<study>/ (write, page); two studies side by
side (compare). ``ganft.report.build.build(study)`` reads the stores and writes the report (what
``ganft report`` runs); nothing in this package imports torch.
"""

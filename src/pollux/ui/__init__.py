"""`pollux ui`: a web app to explore run databases, compare judges and review verdicts.

`pollux.ui.queries.Explorer` is the data layer (SQL over the run stores, the POLLUX aggregation,
reviews); the web layer (`pollux.ui.app`) calls only its API.
"""

"""fmn: the core shared by every deployable of the serverless FMN.

Plain Python, no cloud SDK: the message model (:mod:`fmn.message`,
:mod:`fmn.metadata`), the preferences (:mod:`fmn.prefs`, :mod:`fmn.db`), the
snapshot (:mod:`fmn.snapshot`) and the matchers (:mod:`fmn.matcher`).
"""

__version__ = "0.1.0"

"""The printable case report of one diagnosis: what it says (:mod:`~busi_web.report.content`), the same
content as a one-page PDF (:mod:`~busi_web.report.pdf`, fpdf2), and the reports a server keeps for its
users to open (:mod:`~busi_web.report.keeper`). The HTML page is the web layer's template of the same content.
"""

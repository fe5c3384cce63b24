"""replisynth: disclosure-safe synthetic mirrors of confidential microdata.

Data flows one way: manifest -> extract -> bundle -> synthesize -> pin -> verify -> report.
"""

__version__ = "0.1.0"

"""The crawl → process simulator behind ``keyflow demo``.

A simulated GitHub (:mod:`.world`), a keyflow application on it (:mod:`.sim`),
simulated time (:mod:`.simtime`), the runs (:mod:`.runner`) and the report
(:mod:`.report`).
"""

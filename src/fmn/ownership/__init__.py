"""Who owns what, kept current: package ownership, groups and accounts from Fedora's sources.

* :mod:`.data`: the sources' shapes (dist-git's owner map, the Pagure API's
  project, FASJSON's users and group members) turned into plain values,
  validated; no I/O.
* :mod:`.diff`: what changed between the database and a fetch, and whether a
  fetch looks plausible enough to apply (a bad upstream day must not
  unsubscribe Fedora).
* :mod:`.store`: reading and writing the ownership, accounts and sync state
  in the preferences database, changing only what differs.
* :mod:`.sources`: the HTTP clients (dist-git, FASJSON; Kerberos in production).
* :mod:`.reconcile`: the scheduled full reconcile (``fmn sync``, ``functions/sync``).
* :mod:`.live`: the bus messages that change ownership and membership, applied
  as they arrive (a branch of the match function).
* :mod:`.generate`: a Fedora-sized owner map and a realistic day's changes, for
  benchmarks.
"""

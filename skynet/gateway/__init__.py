"""The upload gateway (`skynet serve`): tus 1.0 uploads into a set of destinations.

    staging.py  unfinished uploads on disk, with fsynced offsets, and their verification
    deliver.py  landing finished uploads in every [gateway] target, in order, retried
    app.py      the HTTP side (tus, downloads with Range, the versions listing)
    server.py   waitress around it, the expiry sweep, start-up
"""

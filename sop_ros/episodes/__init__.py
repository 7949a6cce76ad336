"""The episode format: one MCAP file per episode, written by the recorder, read by the uploader, the cloud's
store and the learner's dataset.

Layout under a recording root:

    <root>/<episode_id>.mcap           finished episodes; a file appears here only complete (atomic rename)
    <root>/.partial/<episode_id>.mcap  the episode being recorded, or one a crash interrupted
    <root>/quarantine/<name>           partials nothing could be read from, each with <name>.reason.txt

    format.py    what a file holds, as data: metadata records, outcomes, topics, controllers, episode ids
    reader.py    reading finished files (no ROS): metadata, counts, messages, the learner's streams
    writer.py    the recorder's crash-safe writer; schemas.py the message definitions it stores
    recovery.py  finishing what a crash left in .partial/
    durable.py   writing files that survive a crash (also the cloud's store and registry, checkpoints)
"""

"""`edgeface bench`: latency, throughput, memory, size and accuracy of artifacts, side by side.

    session.py  one bench, here or on a device: the config checked, rows measured, the report written
    runner.py   artifacts x batch sizes x thread counts, interleaved, one worker process per subject
    worker.py   one subject in its own process (load, warm up, time, outputs, accuracy)
    stats.py    the timing and memory primitives
    report.py   the terminal tables, PNG plots and Markdown summary
    remote.py   --host: the same on a device, over SSH, with the device's own edgeface
"""

"""Kafka in and out: the only package that imports kafka-python (lazily).

Contract: the frames topic carries one image or one encoded video chunk per message,
keyed by stream id (:mod:`stream_worker.kafka.wire`); :class:`KafkaWorker` runs the
pipeline as a consumer-group member and publishes results at least once: an input offset
is committed only after its results are acknowledged, and each partition's pipeline state
is checkpointed with that offset so a take-over replays exactly. Input that is the
message's own fault goes to the dead-letter topic; any other failure stops the partition
without committing past it. The gallery changelog (:mod:`stream_worker.kafka.changelog`)
keeps every worker's gallery in step.
"""

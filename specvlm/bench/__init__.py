"""Benchmark tooling for specvlm.

``specvlm.bench.datasets`` reads benchmark samples (VideoDetailCaption,
MVBench, MLVU, LongVideoBench, or any folder of videos) from local folders in
each benchmark's published layout; nothing is downloaded.
"""

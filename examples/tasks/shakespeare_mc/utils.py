"""Loads the JSONL next to this file, so the task works from any working directory, offline."""

import os

import datasets


def load(**kwargs):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shakespeare_mc.jsonl")
    return datasets.load_dataset("json", data_files={"test": path})

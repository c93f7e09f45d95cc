"""Publishing for SoundCTM: conversion of the authors' released checkpoints into diffusers pipeline folders
(`python -m hub.convert`), model cards (`python -m hub.model_card`), and export/upload of any SoundCTM pipeline
folder as a Hub repo (`python -m hub.publish`).

A plain folder run from the repository root; it is not installed as a package (only `soundctm` is).
"""

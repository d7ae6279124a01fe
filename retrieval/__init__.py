"""Candidate generation: collaborative filtering, text embeddings, FAISS indexes, fusion.

A library: no database, web or job-queue imports here.
"""

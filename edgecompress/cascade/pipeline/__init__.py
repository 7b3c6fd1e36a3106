"""The cascade pipeline over a study: its candidates and deployed stages (study_candidates), in-cascade stage
costs (calibrate), the end-to-end measurement (measure) and the one library call (from_study)."""

"""The training job: train (named steps), the job's facts, optimiser and schedules, callbacks."""

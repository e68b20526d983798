"""The coordinator: opens rounds, waits for quorum or the deadline, finalises, resumes."""

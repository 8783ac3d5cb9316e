"""What happens to a request after the decision: its response, its end, its metrics and log line.

`tracker.Tracking` starts requests through the director and hands back a `RequestTracker` per
request; `follower.ResponseFollower` reads a response body for usage and restores the client's
model name.
"""

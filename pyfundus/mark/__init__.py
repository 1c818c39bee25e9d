"""``pyfundus mark``: the rater app that builds FQS-style datasets from a clinic's own captures."""

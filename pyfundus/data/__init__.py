"""Sample data for pyfundus: real fundus photographs fetched on demand (see ``samples``)."""

"""`edgeres optimize`: a measured search for the fastest artifact within an accuracy budget."""

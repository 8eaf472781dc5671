"""S3 through boto3 with retries at two levels, shared by the checkpoint tier and the data reader.

Below both: neither imports the other, and each keeps its own layout of keys.
"""

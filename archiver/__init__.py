"""archiver: copies Microsoft Graph call logs into partitioned Parquet on S3 or a folder."""

__version__ = "0.1.0"

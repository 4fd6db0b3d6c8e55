"""gateway12123: the SMS (SMPP 3.4) and voice (FastAGI/AMI) gateway behind the 12123 short code."""

__version__ = "0.1.0"

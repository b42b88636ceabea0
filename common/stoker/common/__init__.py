"""What the operator and the workers share, torch-free: label keys, environment
variable names, the checkpoint layout in object storage and the gRPC contract."""

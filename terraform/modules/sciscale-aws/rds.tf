# Postgres for the MLflow tracking store (and the basic-auth user store), reachable only from the EKS
# nodes, encrypted at rest with the stack's key and in transit (rds.force_ssl).
resource "aws_db_subnet_group" "mlflow" {
  name       = "${var.name}-mlflow"
  subnet_ids = aws_subnet.private[*].id
  tags       = local.tags
}

resource "aws_security_group" "mlflow_db" {
  name        = "${var.name}-mlflow-db"
  description = "MLflow Postgres: reachable from the EKS cluster only"
  vpc_id      = aws_vpc.main.id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "mlflow_db_from_eks" {
  security_group_id            = aws_security_group.mlflow_db.id
  description                  = "Postgres from EKS nodes and pods"
  referenced_security_group_id = aws_eks_cluster.main.vpc_config[0].cluster_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_db_parameter_group" "mlflow" {
  name   = "${var.name}-mlflow-pg16"
  family = "postgres16"
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "1000" # slow queries (ms): MLflow's metric queries are the usual suspects
  }
  tags = local.tags
}

resource "random_password" "mlflow_db" {
  length  = 32
  special = false # the password is embedded in a postgresql:// URL
}

resource "aws_db_instance" "mlflow" {
  identifier                            = "${var.name}-mlflow"
  engine                                = "postgres"
  engine_version                        = "16"
  instance_class                        = var.db_instance_class
  allocated_storage                     = var.db_allocated_storage_gib
  max_allocated_storage                 = var.db_allocated_storage_gib * 5
  storage_type                          = "gp3"
  storage_encrypted                     = true
  kms_key_id                            = aws_kms_key.main.arn
  db_name                               = "mlflow"
  username                              = "mlflow"
  password                              = random_password.mlflow_db.result
  iam_database_authentication_enabled   = true
  db_subnet_group_name                  = aws_db_subnet_group.mlflow.name
  vpc_security_group_ids                = [aws_security_group.mlflow_db.id]
  parameter_group_name                  = aws_db_parameter_group.mlflow.name
  publicly_accessible                   = false
  multi_az                              = true
  backup_retention_period               = 14
  copy_tags_to_snapshot                 = true
  deletion_protection                   = true
  skip_final_snapshot                   = false
  final_snapshot_identifier             = "${var.name}-mlflow-final"
  auto_minor_version_upgrade            = true
  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]
  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.main.arn
  performance_insights_retention_period = 7
  monitoring_interval                   = 60
  monitoring_role_arn                   = aws_iam_role.rds_monitoring.arn
  ca_cert_identifier                    = "rds-ca-rsa2048-g1"
  tags                                  = local.tags
}

resource "aws_iam_role" "rds_monitoring" {
  name = "${var.name}-rds-monitoring"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Action    = "sts:AssumeRole"
      Principal = { Service = "monitoring.rds.amazonaws.com" }
    }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

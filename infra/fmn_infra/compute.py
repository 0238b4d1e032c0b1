"""The compute and data stack: functions, web app, feed endpoint, Redis, PostgreSQL, SES, secrets.

Owns what runs code and what holds state, none of which LocalStack runs:

- one Chalice app per ``functions/*/app.py`` (a new folder joins by itself)
  and the web app behind API Gateway (whose own error answers take the
  API's error format: :mod:`fmn_infra.gateway`), each function with a role of its own
  holding only its queues, its secrets, the claim bucket's ``claims/``
  prefix (the match function) and SES (the senders of mail);
- the feed endpoint (``functions/sse/stream.py``) under the Lambda Web
  Adapter behind a function URL with response streaming;
- ElastiCache (Valkey, Redis-compatible) in private subnets, reachable only
  from the functions' security group, with ``maxmemory-policy noeviction``:
  the snapshot, the change log, the idempotency records and the digests must
  never be evicted (a full cache refuses writes, which the functions treat as
  retryable, rather than silently dropping a user's rules);
- Aurora Serverless v2 PostgreSQL for the preferences, reachable only from
  the functions;
- the SES identity with its configuration set;
- the secrets (the signing key, the IRC URL with its password, the OIDC
  client, the database URL) in Secrets Manager, handed to functions by ARN
  (``FMN_SECRETS``, read by :mod:`fmn.secrets`), never as plain variables;
- the functions' alarms (errors, throttles, duration near the timeout), on the
  messaging stack's topic.

Queue names follow the stage's prefix (:mod:`fmn.pipeline.queues`), as in the
messaging stack, which is deployed first.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import jsii
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticache as elasticache
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_ses as ses
from constructs import Construct

from fmn.pipeline import alarms
from fmn.pipeline.queues import BACKENDS, QUEUES, queue
from fmn_infra import gateway
from fmn_infra.alarming import AlarmFactory
from fmn_infra.chalice_apps import ChaliceApp, FunctionInfo
from fmn_infra.messaging import claim_bucket_name, topic_name

ROOT = Path(__file__).resolve().parents[2]
REDIS_PORT = 6379
#: a primary and a replica in another zone (docs/redis.md: a failover keeps the data)
CACHE_NODES = 2
#: the secrets each app reads (names of :attr:`ComputeStack.secrets`); an app
#: not listed gets none.  A new function that needs one gets a line here.
SECRETS_OF: dict[str, tuple[str, ...]] = {
    # match rebuilds a lost snapshot from the database; digests check subscriptions there
    "match": ("database",),
    "send_email": ("signing_key", "database"),
    "send_irc": ("signing_key", "irc"),
    "send_matrix": ("signing_key", "matrix"),
    "snapshot": ("database",),
    "sync": ("database",),
    # the web app sends verification codes over IRC and Matrix itself
    "webapp": ("signing_key", "oidc", "database", "irc", "matrix"),
}
#: apps that send mail through SES
SENDS_MAIL = ("send_email", "webapp")
#: the Lambda Web Adapter layer (github.com/awslabs/aws-lambda-web-adapter)
WEB_ADAPTER_LAYER = "arn:aws:lambda:{region}:753240598075:layer:LambdaAdapterLayerX86:25"


def app_dirs() -> list[Path]:
    """Every Chalice app: ``functions/*/app.py`` and the web app."""
    return sorted(p.parent for p in (ROOT / "functions").glob("*/app.py")) + [ROOT / "webapp"]


class ComputeStack(cdk.Stack):
    """The functions and what they use, for one stage (``prefix``)."""

    def __init__(self, scope: Construct, construct_id: str, *, prefix: str,
                 lean_packages: bool = False, thresholds: alarms.Thresholds | None = None,
                 **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.prefix = prefix
        web_url = cdk.CfnParameter(self, "WebUrl", default="https://notifications.fedoraproject.org",
                                   description="the web UI's public URL (links in notifications)")
        mail_domain = cdk.CfnParameter(self, "MailDomain", default="fedoraproject.org",
                                       description="the SES identity the notifications come from")
        mail_from = cdk.CfnParameter(self, "MailFrom",
                                     default="notifications@fedoraproject.org",
                                     description="the notifications' sender (in MailDomain)")
        oidc_issuer = cdk.CfnParameter(self, "OidcIssuer",
                                       default="https://id.fedoraproject.org/openidc",
                                       description="the OpenID Connect provider of the web app")
        node_type = cdk.CfnParameter(self, "CacheNodeType", default="cache.t4g.small",
                                     description="ElastiCache node type (two nodes, Multi-AZ)")

        self._network()
        self._cache(node_type.value_as_string)
        self._database()
        self._secrets()
        self._mail(mail_domain.value_as_string)

        env = {
            "FMN_QUEUE_PREFIX": prefix,
            "REDIS_URL": self.redis_url,
            "FMN_CLAIM_BUCKET": claim_bucket_name(prefix),
            "FMN_WEB_URL": web_url.value_as_string,
            "FMN_MAIL_TRANSPORT": "ses",
            "FMN_MAIL_FROM": mail_from.value_as_string,
        }
        self.roles: dict[str, iam.Role] = {}
        self.feed_url = self._feed_endpoint(env, lean_packages)
        self.apps: dict[str, ChaliceApp] = {}
        self.alarm_factory = AlarmFactory(self, thresholds)
        topic = self.format_arn(service="sns", resource=topic_name(prefix))
        for definition in alarms.cache_alarms(f"{prefix}cache", CACHE_NODES):
            self.alarm_factory.add(definition, [topic])
        for source in app_dirs():
            name = source.name
            role = self._role(name)
            app_env = dict(env)
            if name == "webapp":
                app_env.update(FMN_ENV="production", FMN_OIDC_ISSUER=oidc_issuer.value_as_string,
                               FMN_FEED_URL=self.feed_url)
            secrets = [self.secrets[s].secret_arn for s in SECRETS_OF.get(name, ())]
            if secrets:
                app_env["FMN_SECRETS"] = cdk.Fn.join(",", secrets)
            app = ChaliceApp(self, f"App-{name}", source_dir=source, prefix=prefix,
                             lean=lean_packages,
                             stage_config={
                                 "manage_iam_role": False, "iam_role_arn": role.role_arn,
                                 "autogen_policy": False,
                                 "environment_variables": app_env,
                                 "subnet_ids": self.vpc.select_subnets(
                                     subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS).subnet_ids,
                                 "security_group_ids": [self.functions_sg.security_group_id],
                             })
            self.apps[name] = app
            if name == "webapp":  # API Gateway's own errors in the API's format
                gateway.apply(app.get_resource("RestAPI"))
            timeouts = {f.name: f.timeout_s for f in app.functions}
            for definition in alarms.function_alarms(prefix, timeouts):
                self.alarm_factory.add(definition, [topic], scope=app)
            self._grant(name, role, app.functions)

        cdk.CfnOutput(self, "RedisUrl", value=self.redis_url)
        cdk.CfnOutput(self, "FeedUrl", value=self.feed_url)
        cdk.CfnOutput(self, "DatabaseSecretArn", value=self.db.secret.secret_arn
                      if self.db.secret else "")
        for key, secret in self.secrets.items():
            cdk.CfnOutput(self, f"Secret{key.title().replace('_', '')}Arn",
                          value=secret.secret_arn)

    # -- network, cache, database ----------------------------------------------

    def _network(self) -> None:
        self.vpc = ec2.Vpc(self, "Vpc", max_azs=2, nat_gateways=1, subnet_configuration=[
            ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC),
            ec2.SubnetConfiguration(name="functions",
                                    subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            ec2.SubnetConfiguration(name="data", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
        ])
        self.functions_sg = ec2.SecurityGroup(
            self, "FunctionsSecurityGroup", vpc=self.vpc, allow_all_outbound=True,
            description="FMN functions: the only clients of the cache and the database")
        self.cache_sg = ec2.SecurityGroup(self, "CacheSecurityGroup", vpc=self.vpc,
                                          allow_all_outbound=False,
                                          description="FMN ElastiCache: functions only")
        self.cache_sg.add_ingress_rule(self.functions_sg, ec2.Port.tcp(REDIS_PORT),
                                       "Redis from the functions")
        self.db_sg = ec2.SecurityGroup(self, "DatabaseSecurityGroup", vpc=self.vpc,
                                       allow_all_outbound=False,
                                       description="FMN PostgreSQL: functions only")
        self.db_sg.add_ingress_rule(self.functions_sg, ec2.Port.tcp(5432),
                                    "PostgreSQL from the functions")

    def _cache(self, node_type: str) -> None:
        params = elasticache.CfnParameterGroup(
            self, "CacheParameters", cache_parameter_group_family="valkey8",
            description="FMN: never evict (the snapshot and idempotency records must stay)",
            properties={"maxmemory-policy": "noeviction"})
        subnets = elasticache.CfnSubnetGroup(
            self, "CacheSubnets", description="FMN cache subnets",
            subnet_ids=self.vpc.select_subnets(
                subnet_type=ec2.SubnetType.PRIVATE_ISOLATED).subnet_ids)
        self.cache = elasticache.CfnReplicationGroup(
            self, "Cache", replication_group_description="FMN snapshot, feeds, idempotency",
            engine="valkey", engine_version="8.0", cache_node_type=node_type,
            num_cache_clusters=CACHE_NODES, automatic_failover_enabled=True, multi_az_enabled=True,
            transit_encryption_enabled=True, at_rest_encryption_enabled=True,
            cache_parameter_group_name=params.ref, cache_subnet_group_name=subnets.ref,
            security_group_ids=[self.cache_sg.security_group_id],
            snapshot_retention_limit=3, port=REDIS_PORT)
        self.redis_url = cdk.Fn.join("", [
            "rediss://", self.cache.attr_primary_end_point_address, ":",
            self.cache.attr_primary_end_point_port, "/0"])

    def _database(self) -> None:
        self.db = rds.DatabaseCluster(
            self, "Database",
            engine=rds.DatabaseClusterEngine.aurora_postgres(
                version=rds.AuroraPostgresEngineVersion.VER_16_9),
            writer=rds.ClusterInstance.serverless_v2("writer"),
            serverless_v2_min_capacity=0.5, serverless_v2_max_capacity=4,
            credentials=rds.Credentials.from_generated_secret(
                "fmn", secret_name=f"{self.prefix}database-admin",
                # the password goes into a URL: no characters that need quoting
                exclude_characters=" %+~`#$&*()|[]{}:;<>?!'/@\"\\,="),
            default_database_name="fmn", vpc=self.vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            security_groups=[self.db_sg], storage_encrypted=True,
            iam_authentication=False, deletion_protection=True,
            backup=rds.BackupProps(retention=cdk.Duration.days(7)),
            removal_policy=cdk.RemovalPolicy.SNAPSHOT)

    def _secrets(self) -> None:
        """Each secret is a JSON object of setting variables (:mod:`fmn.secrets`)."""
        p = self.prefix

        def placeholder(construct_id: str, name: str, values: dict[str, str],
                        what: str) -> secretsmanager.Secret:
            return secretsmanager.Secret(
                self, construct_id, secret_name=f"{p}{name}", description=what,
                secret_object_value={k: cdk.SecretValue.unsafe_plain_text(v)
                                     for k, v in values.items()})

        assert self.db.secret is not None
        password = self.db.secret.secret_value_from_json("password").unsafe_unwrap()
        self.secrets: dict[str, secretsmanager.Secret] = {
            "signing_key": secretsmanager.Secret(
                self, "SigningKey", secret_name=f"{p}signing-key",
                description="FMN_SECRET_KEY: signs feed links, sessions, unsubscribe links",
                generate_secret_string=secretsmanager.SecretStringGenerator(
                    secret_string_template="{}", generate_string_key="FMN_SECRET_KEY",
                    exclude_punctuation=True, password_length=64)),
            # set by the operator (docs/operations.md): the deployment holds no credential
            "irc": placeholder("IrcUrl", "irc", {"FMN_IRC_URL": "ircs://fmn@irc.libera.chat:6697"},
                               "FMN_IRC_URL with the nick's SASL password"),
            "matrix": placeholder("Matrix", "matrix", {"FMN_MATRIX_TOKEN": ""},
                                  "the Matrix sender's access token"),
            "oidc": placeholder("Oidc", "oidc", {"FMN_OIDC_CLIENT_ID": "",
                                                 "FMN_OIDC_CLIENT_SECRET": ""},
                                "the web app's OpenID Connect client"),
            # a dynamic reference to the generated password, resolved by CloudFormation
            "database": placeholder("DatabaseUrl", "database-url", {"FMN_DATABASE_URL": cdk.Fn.join(
                "", ["postgresql+psycopg://fmn:", password, "@",
                     self.db.cluster_endpoint.hostname, ":", "5432", "/fmn"])},
                "FMN_DATABASE_URL of the preferences database"),
        }

    def _mail(self, domain: str) -> None:
        self.config_set = ses.CfnConfigurationSet(
            self, "MailConfigurationSet", name=f"{self.prefix}mail",
            reputation_options=ses.CfnConfigurationSet.ReputationOptionsProperty(
                reputation_metrics_enabled=True),
            sending_options=ses.CfnConfigurationSet.SendingOptionsProperty(sending_enabled=True))
        self.identity = ses.CfnEmailIdentity(
            self, "MailIdentity", email_identity=domain,
            configuration_set_attributes=ses.CfnEmailIdentity.ConfigurationSetAttributesProperty(
                configuration_set_name=self.config_set.ref),
            dkim_signing_attributes=ses.CfnEmailIdentity.DkimSigningAttributesProperty(
                next_signing_key_length="RSA_2048_BIT"))
        self.mail_arns = [
            self.format_arn(service="ses", resource="identity", resource_name=domain),
            self.format_arn(service="ses", resource="configuration-set",
                            resource_name=f"{self.prefix}mail"),
        ]

    # -- roles ------------------------------------------------------------------

    def _role(self, name: str) -> iam.Role:
        role = iam.Role(
            self, f"Role-{name}", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"FMN {name}: only its queues, secrets, bucket prefix and mail",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(
                # logs, and the network interfaces of a function in a VPC
                "service-role/AWSLambdaVPCAccessExecutionRole")])
        self.roles[name] = role
        return role

    def _queue_arn(self, sqs_name: str) -> str:
        return self.format_arn(service="sqs", resource=sqs_name)

    def _grant(self, name: str, role: iam.Role, functions: list[FunctionInfo]) -> None:
        p = self.prefix
        for f in functions:
            q = f.queue
            if q is None:
                continue
            role.add_to_policy(iam.PolicyStatement(
                sid="ConsumeItsQueue",
                actions=["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes",
                         "sqs:ChangeMessageVisibility"],
                resources=[self._queue_arn(q.sqs_name(p))]))
            if q.name in BACKENDS:  # senders dead-letter single items themselves
                role.add_to_policy(iam.PolicyStatement(
                    sid="DeadLetterItems", actions=["sqs:SendMessage", "sqs:GetQueueUrl"],
                    resources=[self._queue_arn(q.dlq_name(p))]))
            if q.name == "incoming":  # the match function: fan out, read claims
                role.add_to_policy(iam.PolicyStatement(
                    sid="FanOut", actions=["sqs:SendMessage", "sqs:GetQueueUrl"],
                    resources=[self._queue_arn(queue(b).sqs_name(p)) for b in BACKENDS
                               if any(qd.name == b for qd in QUEUES)]))
                role.add_to_policy(iam.PolicyStatement(
                    sid="ReadClaims", actions=["s3:GetObject"],
                    resources=[f"arn:{cdk.Aws.PARTITION}:s3:::{claim_bucket_name(p)}/claims/*"]))
        if name in SENDS_MAIL:
            role.add_to_policy(iam.PolicyStatement(
                sid="SendMail", actions=["ses:SendRawEmail", "ses:SendEmail"],
                resources=self.mail_arns))
        for s in SECRETS_OF.get(name, ()):
            self.secrets[s].grant_read(role)

    # -- the feed endpoint --------------------------------------------------------

    def _feed_endpoint(self, env: dict[str, str], lean: bool) -> str:
        """stream.py under the Lambda Web Adapter, behind a streaming function URL."""
        source = ROOT / "functions" / "sse"
        role = self._role("feed")
        self.secrets["signing_key"].grant_read(role)
        fn = lambda_.Function(
            self, "FeedStream", function_name=f"{self.prefix}feed",
            runtime=lambda_.Runtime.PYTHON_3_12, handler="stream/run.sh",
            code=lambda_.Code.from_asset(str(source), bundling=cdk.BundlingOptions(
                image=cdk.DockerImage.from_registry("unused"),
                local=_FeedBundle(source, lean))),
            memory_size=256,
            # Lambda's maximum; each response ends a little earlier and
            # EventSource reconnects with Last-Event-ID
            timeout=cdk.Duration.seconds(900),
            # every open feed holds one execution environment: this caps their share
            reserved_concurrent_executions=200,
            layers=[lambda_.LayerVersion.from_layer_version_arn(
                self, "WebAdapter", WEB_ADAPTER_LAYER.format(region=self.region))],
            environment={
                "AWS_LAMBDA_EXEC_WRAPPER": "/opt/bootstrap",
                "AWS_LWA_INVOKE_MODE": "response_stream",
                "AWS_LWA_READINESS_CHECK_PATH": "/healthz", "PORT": "8080",
                "REDIS_URL": env["REDIS_URL"], "FMN_WEB_URL": env["FMN_WEB_URL"],
                "FMN_SECRETS": self.secrets["signing_key"].secret_arn,
                # as the web app: the development signing key is refused at start
                "FMN_ENV": "production",
                "FMN_SSE_MAX_STREAM_S": "870", "FMN_SSE_PING_S": "15",
            },
            vpc=self.vpc, security_groups=[self.functions_sg],
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            role=role)
        url = fn.add_function_url(auth_type=lambda_.FunctionUrlAuthType.NONE,
                                  invoke_mode=lambda_.InvokeMode.RESPONSE_STREAM)
        return url.url


@jsii.implements(cdk.ILocalBundling)
class _FeedBundle:
    """The feed endpoint's code: stream.py, its launcher, vendor/ and Linux wheels (no Docker)."""

    def __init__(self, source: Path, lean: bool) -> None:
        self.source, self.lean = source, lean

    def try_bundle(self, output_dir: str, *, image: Any = None, **_: Any) -> bool:
        out = Path(output_dir)
        shutil.copy2(self.source / "stream.py", out / "stream.py")
        shutil.copytree(self.source / "stream", out / "stream", dirs_exist_ok=True)
        if (self.source / "vendor").is_dir():
            shutil.copytree(self.source / "vendor", out, dirs_exist_ok=True)
        if not self.lean:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(out),
                            "--platform", "manylinux2014_x86_64", "--only-binary=:all:",
                            "--python-version", "3.12", "-r",
                            str(self.source / "requirements.txt")], check=True)
        return True

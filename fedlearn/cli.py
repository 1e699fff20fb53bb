"""The ``fedlearn`` command line (typer + rich)."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from fedlearn.config import ConfigError, RunConfig
from fedlearn.data import DataError

if TYPE_CHECKING:
    from fedlearn.privacy.policy import HolderPolicy

app = typer.Typer(
    name="fedlearn",
    help="Privacy-preserving federated learning on Flower.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()


def _fail(message: str, hint: str = "") -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    if hint:
        err.print(f"[yellow]next:[/] {hint}")
    return typer.Exit(code=2)


def _log_to_console() -> None:
    from rich.logging import RichHandler

    logger = logging.getLogger("fedlearn")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, RichHandler) for h in logger.handlers):  # once per process
        logger.addHandler(RichHandler(console=err, show_path=False))


_SECURE_HELP = "Secure aggregation: ckks, secagg+, crypten or none."
_SECURE_SAYS = {
    "ckks": "secure aggregation by CKKS homomorphic encryption (the server adds "
    "ciphertexts; the key is held by the data holders)",
    "secagg+": "secure aggregation by SecAgg+ masking (the server sees only the sum)",
    "crypten": "secure aggregation by CrypTen secret sharing (compute parties reveal only the sum)",
    "none": "[bold red]no secure aggregation: the server sees every update[/]",
}


def _with_secure(cfg: RunConfig, secure: str | None) -> RunConfig:
    """``cfg`` with ``--secure`` applied, and a loud warning when updates are in the clear."""
    if secure is not None:
        cfg = cfg.with_overrides(secure={"mode": secure})
    if cfg.secure.mode == "none":
        err.print(
            "[bold red]WARNING: secure aggregation is off (secure.mode = 'none'): the server "
            "sees every client's update. Use --secure ckks|secagg+|crypten.[/]"
        )
    return cfg


def _default_run_dir(prefix: str) -> Path:
    return Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def _run_simulation(
    cfg: RunConfig, *, run_dir: Path, resume: bool, as_json: bool
) -> dict[str, Any]:
    from fedlearn.reporting import round_progress, round_table
    from fedlearn.simulation import simulate

    first = 0
    if resume:
        from fedlearn.checkpoint import load_latest

        checkpoint = load_latest(run_dir / "checkpoints")
        first = checkpoint.round if checkpoint else 0
    started = time.perf_counter()
    with round_progress(err, rounds=cfg.federation.rounds, first=first) as on_round:
        history = simulate(cfg, run_dir=run_dir, resume=resume, on_round=on_round)
    elapsed = time.perf_counter() - started
    if not as_json:
        out.print(round_table(history, title=f"fedlearn — {run_dir}"))
    return {
        "run_dir": str(run_dir),
        "rounds": len(history.rounds),
        "clients": cfg.federation.clients,
        "seed": cfg.federation.seed,
        "final_accuracy": history.final_accuracy,
        "seconds": round(elapsed, 2),
        "bytes_sent": sum(r.bytes_sent + r.bytes_received for r in history.rounds),
        "history": history,
    }


@app.command()
def demo(
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 15,
    clients: Annotated[int, typer.Option(help="Simulated data holders.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed for data split, model and training.")] = 42,
    dataset: Annotated[str, typer.Option(help="Bundled dataset: digits or mnist.")] = "digits",
    alpha: Annotated[float, typer.Option(help="Dirichlet non-IID concentration.")] = 0.5,
    epsilon: Annotated[
        float, typer.Option(help="Each data holder's ε for the whole run (local DP-SGD).")
    ] = 8.0,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="Train without DP, to compare.")] = False,
    secure: Annotated[str, typer.Option(help=_SECURE_HELP)] = "ckks",
    attest: Annotated[
        bool,
        typer.Option(help="Score and attest every round on the embedded chain, then claim."),
    ] = True,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train a model federated across simulated data holders on bundled real data.

    Measures centralized training of the same model on the same data in the
    same run and prints both accuracies.
    """
    from fedlearn.demo import finish_demo, plan_demo
    from fedlearn.reporting import claims_table, contribution_table

    try:
        plan = plan_demo(
            rounds=rounds,
            clients=clients,
            seed=seed,
            dataset=dataset,
            alpha=alpha,
            epsilon=epsilon,
            dp=not no_dp,
            secure=secure,
            attest=attest,
        )
    except (ConfigError, DataError) as exc:
        raise _fail(str(exc), "check the option values (fedlearn demo --help)") from None
    run_dir = run_dir or _default_run_dir("demo")
    privacy = (
        "no differential privacy (--no-dp)"
        if no_dp
        else f"local DP-SGD, each holder's budget ε={epsilon} "
        f"(δ={plan.config.privacy.delta:g}) for the run"
    )
    err.print(
        f"[bold]fedlearn demo[/]: {clients} data holders, {dataset} "
        f"(Dirichlet α={alpha}, {plan.training_examples} training examples), "
        f"{rounds} rounds of FedAvg on Flower's Simulation Engine, {privacy}, "
        f"{_SECURE_SAYS[secure]} → {run_dir}"
    )
    summary = _run_simulation(plan.config, run_dir=run_dir, resume=False, as_json=as_json)
    result = finish_demo(plan, history=summary.pop("history"), run_dir=run_dir)
    summary.update(result.to_summary())
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    label = (
        "centralized (same model, pooled data)"
        if no_dp
        else f"centralized DP-SGD at the same ε={epsilon}"
    )
    out.print(
        f"federated accuracy [bold]{result.federated_accuracy:.4f}[/]  vs  "
        f"{label} [bold]{result.baseline:.4f}[/] (gap {result.gap_points:+.2f} points)"
    )
    if not no_dp:
        spent = result.max_client_epsilon  # None when every round was skipped
        out.print(
            f"non-private centralized: {result.centralized_accuracy:.4f}; largest ε any holder "
            f"spent: {'–' if spent is None else f'{spent:.3f}'} ≤ budget {epsilon}"
        )
    out.print(f"plot: {run_dir / 'history.png'}   ledger per round: {run_dir / 'history.json'}")
    out.print(f"report: {run_dir / 'report.html'} (fedlearn report --run {run_dir} --open)")
    if result.claims:
        out.print(contribution_table(result.history))
        out.print(claims_table(result.claims))
        out.print(f"anyone can check a holder: fedlearn verify --run {run_dir} --client ADDRESS")


@app.command("simulate")
def simulate_cmd(
    config: Annotated[Path | None, typer.Option(help="Run config (TOML).")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue this run directory from its last checkpoint.")
    ] = None,
    secure: Annotated[
        str | None, typer.Option(help=_SECURE_HELP + " Overrides the config.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run a config on Flower's Simulation Engine (the same config `server` deploys)."""
    try:
        if resume is not None:
            saved = resume / "config.toml"
            cfg = RunConfig.load(config or saved)
        elif config is not None:
            cfg = RunConfig.load(config)
        else:
            raise ConfigError("give --config run.toml (or --resume RUN_DIR)")
        cfg = _with_secure(cfg, secure)
    except ConfigError as exc:
        raise _fail(str(exc), "fix the config file; every key is documented in README.md") from None
    target = resume or run_dir or _default_run_dir("sim")
    try:
        summary = _run_simulation(cfg, run_dir=target, resume=resume is not None, as_json=as_json)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    summary.pop("history")
    summary["report"] = str(target / "report.html")
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        out.print(f"report: {target / 'report.html'}")


@app.command()
def server(
    config: Annotated[Path, typer.Option(help="Run config (TOML).")],
    run_dir: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue this run directory from its last checkpoint.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address SuperNodes connect to.")] = "0.0.0.0",
    port: Annotated[
        int,
        typer.Option(help="The federation's port (Fleet API; Control API: operator only)."),
    ] = 9092,
    certificates: Annotated[
        Path | None,
        typer.Option(help="Folder with ca.crt, server.pem, server.key (default: create a CA)."),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Disable TLS (trusted test networks only).")
    ] = False,
    supernode_auth: Annotated[
        bool, typer.Option("--supernode-auth", help="Only registered SuperNodes may join.")
    ] = False,
    authorized_key: Annotated[
        list[Path] | None, typer.Option(help="A SuperNode public key to register (repeatable).")
    ] = None,
    tls_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Name or IP SuperNodes use to reach this server (certificate; repeatable)."
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds the whole run may take.")] = 3600.0,
    secure: Annotated[
        str | None, typer.Option(help=_SECURE_HELP + " Overrides the config.")
    ] = None,
    renew_certificates: Annotated[
        bool,
        typer.Option(
            "--renew-certificates",
            help="Issue a new server certificate from this run's CA, then serve "
            "(holders keep their ca.crt).",
        ),
    ] = False,
) -> None:
    """Run the federation on Flower's Deployment Engine (SuperLink + ServerApp).

    Data holders join with `fedlearn client --superlink HOST:PORT --data FILE`.

    TLS: the first start creates a CA (10 years) and a server certificate
    (1 year) in RUN_DIR/certs (public: give holders ca.crt); their keys stay in
    RUN_DIR/secrets/tls. Later starts keep both. Before the certificate
    expires, restart with --resume RUN_DIR --renew-certificates.
    """
    from fedlearn.deployment import SuperLinkSettings, serve
    from fedlearn.files import run_secrets
    from fedlearn.reporting import round_table
    from fedlearn.tls import server_certificates

    _log_to_console()
    try:
        cfg = _with_secure(RunConfig.load(config), secure)
    except ConfigError as exc:
        raise _fail(str(exc), "fix the config file") from None
    target = (resume or run_dir or _default_run_dir("server")).resolve()
    if secure is not None:  # the ServerApp reads its config from a file
        import tomli_w

        target.mkdir(parents=True, exist_ok=True)
        config = target / "effective-config.toml"
        config.write_text(tomli_w.dumps(cfg.to_dict()), encoding="utf-8")
    try:
        certs = server_certificates(
            target / "certs",
            host=host,
            certificates=certificates,
            tls_hosts=tls_host or (),
            insecure=insecure,
            supernode_auth=supernode_auth,
            key_directory=None if insecure or certificates else run_secrets(target) / "tls",
            renew=renew_certificates,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    if certs is None:
        err.print("[bold red]WARNING: --insecure: no TLS; updates travel in the clear.[/]")
    elif certificates is None:
        err.print(f"the federation's CA: give data holders {certs.ca}")
    settings = SuperLinkSettings(
        host=host,
        port=port,
        certificates=certs,
        supernode_auth=supernode_auth,
        database=target / "superlink.db",
    )
    err.print(
        f"[bold]fedlearn server[/]: {cfg.federation.rounds} rounds, waiting for "
        f"{cfg.federation.clients} SuperNodes on {host}:{port} "
        f"({'TLS' if certs else 'INSECURE'}) → {target}"
    )

    def on_progress(history: Any) -> None:
        last = history.rounds[-1] if history.rounds else None
        if last is not None:
            err.print(
                f"round {last.round}/{cfg.federation.rounds}: accuracy "
                f"{last.accuracy if last.accuracy is not None else last.federated_accuracy}, "
                f"{last.accepted}/{last.sampled} clients"
            )

    try:
        history = serve(
            config_path=config,
            run_dir=target,
            settings=settings,
            authorized_keys=tuple(authorized_key or ()),
            resume=resume is not None,
            timeout=timeout,
            on_progress=on_progress,
        )
    except (RuntimeError, TimeoutError) as exc:
        raise _fail(
            str(exc), f"see the logs in {target / 'logs'}; resume with --resume {target}"
        ) from None
    out.print(round_table(history, title=f"fedlearn — {target}"))
    out.print(f"report: {target / 'report.html'}")


def _holder_policy(
    *,
    allow_plaintext: bool,
    require_secure: list[str] | None,
    min_contributors: int | None,
    crypten_party_key: list[Path] | None,
) -> HolderPolicy:
    """The holder's policy from ``fedlearn client``'s options (validated here, before joining)."""
    from fedlearn.privacy.policy import SECURE_MODES, HolderPolicy

    keys: list[bytes] = []
    for path in crypten_party_key or ():
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise _fail(f"cannot read CrypTen party key {path}: {exc}") from None
        try:
            keys.append(raw if len(raw) == 32 else bytes.fromhex(raw.decode().strip()))
        except (UnicodeDecodeError, ValueError):
            raise _fail(
                f"{path} is not an X25519 public key (32 bytes, or 64 hex characters)",
                "use the key file the party's operator published",
            ) from None
    try:
        return HolderPolicy(
            secure_modes=frozenset(require_secure) if require_secure else SECURE_MODES,
            allow_plaintext=allow_plaintext,
            min_contributors=min_contributors,
            crypten_party_keys=tuple(keys) if keys else None,
        )
    except ValueError as exc:
        raise _fail(f"invalid policy: {exc}") from None


@app.command()
def client(
    superlink: Annotated[str, typer.Option(help="SuperLink address HOST:PORT.")],
    data: Annotated[Path, typer.Option(help="Your CSV file, NPZ file or image folder.")],
    label_column: Annotated[
        str | None, typer.Option(help="Name of the label column in your CSV.")
    ] = None,
    root_certificates: Annotated[
        Path | None, typer.Option(help="The federation's CA certificate (ca.crt).")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Connect without TLS (test networks only).")
    ] = False,
    auth_key: Annotated[
        Path | None, typer.Option(help="Private key registered with the operator.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="The run's config, to check your file before joining.")
    ] = None,
    partition_id: Annotated[int | None, typer.Option(help="Stable client number.")] = None,
    epsilon_budget: Annotated[
        float | None,
        typer.Option(help="Your total ε over all rounds and runs on this data; enforced here."),
    ] = None,
    delta: Annotated[float, typer.Option(help="δ of your budget.")] = 1e-5,
    ledger_dir: Annotated[
        Path | None, typer.Option(help="Where your privacy ledger lives (default ~/.fedlearn).")
    ] = None,
    port: Annotated[int, typer.Option(help="Local port of this node's runtime API (0: any).")] = 0,
    wallet_keystore: Annotated[
        Path | None,
        typer.Option(
            help="Your wallet keystore (signs your updates in attested runs; password in "
            "$FEDLEARN_WALLET_PASSWORD). Default: $FEDLEARN_WALLET_KEY."
        ),
    ] = None,
    trust_app_hash: Annotated[
        list[str] | None,
        typer.Option(
            help="SHA-256 of another app bundle you reviewed and will run (repeatable). "
            "Without it only fedlearn's own app, at your installed version, runs."
        ),
    ] = None,
    allow_plaintext: Annotated[
        bool,
        typer.Option(
            "--allow-plaintext",
            help="Also join plaintext rounds (the server then sees your update). Default: refused.",
        ),
    ] = False,
    require_secure: Annotated[
        list[str] | None,
        typer.Option(
            help="A secure mode you accept: ckks, secagg+ or crypten (repeatable). "
            "Default: any secure mode."
        ),
    ] = None,
    min_contributors: Annotated[
        int | None,
        typer.Option(
            help="Help reveal only sums of at least this many contributors (>= 2). "
            "Default: the run's min-train-clients, never below 2."
        ),
    ] = None,
    crypten_party_key: Annotated[
        list[Path] | None,
        typer.Option(
            help="A CrypTen party's X25519 public key file (hex), in party order (repeatable): "
            "CrypTen rounds announcing other keys are refused."
        ),
    ] = None,
) -> None:
    """Join a federation as a data holder: train on your own file; the data never leaves.

    The run's schema (features, label column, classes) arrives with the first
    round and your file is checked against it before any training; give
    --config to check it right now. Every request from the server is checked
    against your policy (secure mode, contributors, DP, CrypTen party keys)
    and refused, with the rule named, when it falls below it.
    """
    import os
    import tempfile

    from fedlearn.app_trust import AppTrust, serve_tasks
    from fedlearn.data import load_file, schema_for
    from fedlearn.deployment import flower_process_env, supernode_command
    from fedlearn.privacy import PrivacyBudget
    from fedlearn.processes import free_port

    if not data.exists():
        raise _fail(f"data file not found: {data}", "pass the path of your CSV, NPZ or folder")
    if epsilon_budget is not None:
        try:
            PrivacyBudget(epsilon=epsilon_budget, delta=delta)
        except ValueError as exc:
            raise _fail(f"invalid privacy budget: {exc}") from None
    if insecure == (root_certificates is not None):
        raise _fail(
            "give exactly one of --root-certificates CA_FILE or --insecure",
            "ask the operator for the federation's ca.crt",
        )
    if root_certificates is not None and not root_certificates.is_file():
        raise _fail(f"CA certificate not found: {root_certificates}")
    try:
        trust = AppTrust.for_holder(trust_app_hash or ())
    except ValueError as exc:
        raise _fail(str(exc)) from None
    policy = _holder_policy(
        allow_plaintext=allow_plaintext,
        require_secure=require_secure,
        min_contributors=min_contributors,
        crypten_party_key=crypten_party_key,
    )
    if config is not None:
        try:
            cfg = RunConfig.load(config)
            schema = schema_for(cfg.data)
            if label_column:
                schema = type(schema)(**{**schema.__dict__, "label_column": label_column})
            local = load_file(data, schema)
        except (ConfigError, DataError) as exc:
            raise _fail(str(exc), "fix your file (or --label-column) before joining") from None
        err.print(f"{data}: {len(local)} examples match the run's schema")
        if epsilon_budget is not None and cfg.privacy.local_dp:
            from fedlearn.client_app import dp_round_plan
            from fedlearn.data import split_validation
            from fedlearn.privacy import epsilon, release_event

            holdout = cfg.data.validation_fraction if cfg.federation.fraction_evaluate else 0.0
            train_set, _ = split_validation(local, fraction=holdout, seed=cfg.federation.seed)
            plan = dp_round_plan(cfg, len(train_set))
            one_round = epsilon(
                release_event(
                    mechanism="dpsgd",
                    noise_multiplier=plan.noise_multiplier,
                    steps=plan.steps,
                    sample_rate=plan.sample_rate,
                ),
                delta=delta,
            )
            if one_round > epsilon_budget:
                raise _fail(
                    f"your budget ε={epsilon_budget} is smaller than one round of this run "
                    f"(ε={one_round:.3f} per round at δ={delta})",
                    "raise --epsilon-budget, or ask the operator for more noise per round",
                )
            err.print(f"one round costs ε={one_round:.3f}; your budget is ε={epsilon_budget}")
        # Warnings, not failures: the operator may still choose the mode when it starts
        # the server (fedlearn server --secure MODE); every round is checked anyway.
        if not policy.allows(cfg.secure.mode):
            err.print(
                f"[yellow]this config's secure mode {cfg.secure.mode!r} is below your policy: "
                "rounds in that mode will be refused (ask the operator for a mode you accept, "
                "or add --allow-plaintext / --require-secure MODE if you accept it)[/]"
            )
        if epsilon_budget is not None and not cfg.privacy.local_dp:
            err.print(
                "[yellow]this config has no local DP and you set a privacy budget: its rounds "
                "will be refused (ask the operator for privacy.local-dp = true)[/]"
            )
    if insecure:
        err.print("[bold red]WARNING: --insecure: no TLS; your updates travel in the clear.[/]")
    runtime_port = port or free_port()
    private = Path(tempfile.mkdtemp(prefix="fedlearn-client-"))  # 0700
    secret = private / "superexec.secret"
    secret.touch(mode=0o600)
    secret.write_bytes(os.urandom(32))
    try:
        cmd = supernode_command(
            superlink=superlink,
            data_path=data,
            root_certificates=root_certificates,
            port=runtime_port,
            label_column=label_column,
            partition_id=partition_id,
            auth_key=auth_key,
            epsilon_budget=epsilon_budget,
            delta=delta if epsilon_budget is not None else None,
            ledger_dir=ledger_dir,
            wallet_keystore=wallet_keystore,
            superexec_secret=secret,
            policy=policy.node_config(),
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if wallet_keystore is not None:
        from fedlearn.attestation.signing import WalletError, load_wallet

        try:
            err.print(f"wallet {load_wallet(keystore=wallet_keystore).address} signs your updates")
        except WalletError as exc:
            raise _fail(str(exc), "check the keystore and $FEDLEARN_WALLET_PASSWORD") from None
    home = Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))
    err.print(f"joining {superlink} with {data} (raw data stays on this machine)")
    err.print(f"this client runs only {trust.describe()}; any other app is refused")
    err.print("[bold]your policy[/] (requests below it are refused, the rule named):")
    for line in policy.describe():
        err.print(f"  {line}")
    try:
        code = serve_tasks(
            supernode=cmd,
            env=flower_process_env(home),
            runtime_api_address=f"127.0.0.1:{runtime_port}",
            secret_file=secret,
            trust=trust,
            log_dir=private,
        )
    finally:
        import shutil

        shutil.rmtree(private, ignore_errors=True)
    raise typer.Exit(code)


_RUN_HELP = "The run directory (it holds the published attestation bundles)."
_CHAIN_HELP = "JSON-RPC URL of the chain (default: the run's own chain)."
_PUBLISHED_HELP = (
    "The run directory, or a copy of its public part: attestations/ and, for the "
    "embedded chain, chain/ (never secrets/)."
)


@app.command()
def verify(
    run: Annotated[Path, typer.Option(help=_PUBLISHED_HELP)],
    client: Annotated[str, typer.Option(help="The client's wallet address.")],
    chain: Annotated[str | None, typer.Option(help=_CHAIN_HELP)] = None,
) -> None:
    """Check a client's published records against the roots on chain (anyone can).

    Needs only what a run publishes (bundles, contract addresses, the chain):
    no key, no secrets/ folder, not even the run's config.toml.
    """
    from rich.table import Table

    from fedlearn.attestation.bundle import verify_bundles
    from fedlearn.attestation.chain import ChainError
    from fedlearn.attestation.session import TOKEN_DECIMALS, run_contracts

    try:
        opened, contracts = run_contracts(run, chain=chain)
    except (FileNotFoundError, ConfigError, ChainError, ValueError) as exc:
        raise _fail(str(exc), "give the run directory of an attested run (and --chain)") from None
    try:
        report = verify_bundles(run_dir=run, address=client, contracts=contracts)
    except (FileNotFoundError, ChainError, ValueError) as exc:
        raise _fail(str(exc)) from None
    finally:
        opened.close()
    table = Table(title=f"{client} in {run}")
    for name in ("round", "score", "examples", "ε", "reward (FLR)", "proof"):
        table.add_column(name, justify="right")
    for number in sorted({*report.verified, *report.failures}):
        if number in report.leaves:
            leaf, _ = report.leaves[number]
            table.add_row(
                str(number),
                f"{leaf.score / 1e6:.4g}",
                str(leaf.examples),
                "–" if leaf.epsilon_micro >= 2**255 else f"{leaf.epsilon_micro / 1e6:.3f}",
                f"{leaf.amount / 10**TOKEN_DECIMALS:,.2f}",
                "[green]verified on chain[/]",
            )
        else:
            table.add_row(str(number), "", "", "", "", f"[red]{report.failures[number]}[/]")
    out.print(table)
    if report.failures:
        raise _fail(f"{len(report.failures)} round(s) do not verify (see the table)")
    if not report.verified:
        raise _fail(f"no attested record of {client} in {run}")


@app.command()
def party(
    rank: Annotated[int, typer.Option(help="This party's index, 0 .. world-size - 1.")],
    world_size: Annotated[int, typer.Option(help="Number of compute parties (>= 2).")],
    rendezvous: Annotated[
        str, typer.Option(help="tcp://HOST:PORT where the parties meet (party 0 listens).")
    ],
    listen: Annotated[str, typer.Option(help="HOST:PORT the server connects to.")],
    key_dir: Annotated[Path, typer.Option(help="This party's key directory (0700).")],
    run: Annotated[str, typer.Option(help="The run this party serves (one run per start).")],
    holders: Annotated[
        Path, typer.Option(help='Registered holders: JSON {"name": "hex Ed25519 key"}.')
    ],
    min_contributors: Annotated[
        int, typer.Option(help="Reveal only sums of at least this many holders.")
    ] = 2,
) -> None:
    """Run one CrypTen compute party as its own operator (its key, its address).

    Prints the party's public key and fingerprint (for the run config's
    [secure] crypten-party-keys), then serves the server's channel until
    stopped (Ctrl-C / SIGTERM). Opens only shares a registered holder signed.
    """
    from fedlearn.privacy.secure.crypten_service import serve

    argv = [
        f"--rank={rank}",
        f"--world-size={world_size}",
        f"--rendezvous={rendezvous}",
        f"--listen={listen}",
        f"--key-dir={key_dir}",
        f"--run={run}",
        f"--holders={holders}",
        f"--min-contributors={min_contributors}",
    ]
    raise typer.Exit(serve(argv))


@app.command()
def claim(
    run: Annotated[Path, typer.Option(help=_RUN_HELP)],
    keystore: Annotated[
        Path | None,
        typer.Option(help="Your wallet keystore (password in $FEDLEARN_WALLET_PASSWORD)."),
    ] = None,
    chain: Annotated[str | None, typer.Option(help=_CHAIN_HELP)] = None,
) -> None:
    """Claim your rewards: one transaction per verified, unclaimed round.

    The wallet is the one that signed your updates: --keystore, else
    $FEDLEARN_WALLET_KEY. Already-claimed rounds are skipped.
    """
    from fedlearn.attestation.bundle import claim_rewards
    from fedlearn.attestation.chain import ChainError
    from fedlearn.attestation.session import TOKEN_DECIMALS, run_contracts
    from fedlearn.attestation.signing import WalletError, load_wallet

    try:
        account = load_wallet(keystore=keystore)
    except WalletError as exc:
        raise _fail(str(exc)) from None
    try:
        opened, contracts = run_contracts(run, chain=chain)
    except (FileNotFoundError, ConfigError, ChainError, ValueError) as exc:
        raise _fail(str(exc), "give the run directory of an attested run (and --chain)") from None
    try:
        opened.ensure_gas(account.address)
        report = claim_rewards(run_dir=run, account=account, contracts=contracts)
        balance = contracts.token_balance(account.address)
    except (FileNotFoundError, ChainError, ValueError) as exc:
        raise _fail(str(exc), "rerun `fedlearn claim` to claim what is left") from None
    finally:
        opened.close()
    for number, amount in sorted(report.amounts.items()):
        out.print(f"round {number}: claimed {amount / 10**TOKEN_DECIMALS:,.2f} FLR")
    if report.skipped:
        out.print(f"already claimed or nothing to claim: rounds {report.skipped}")
    for number, reason in sorted(report.failures.items()):
        err.print(f"[red]round {number} not claimed: {reason}[/]")
    out.print(f"{account.address} holds {balance / 10**TOKEN_DECIMALS:,.2f} FLR")
    if report.failures:
        raise typer.Exit(1)


@app.command()
def attest(
    run: Annotated[Path, typer.Option(help=_RUN_HELP)],
    chain: Annotated[str | None, typer.Option(help=_CHAIN_HELP)] = None,
    seconds: Annotated[float, typer.Option(help="How long to keep retrying.")] = 60.0,
) -> None:
    """Post the attestations still waiting in a run's outbox (coordinator key from the env)."""
    from fedlearn.attestation.chain import ChainError
    from fedlearn.attestation.outbox import Outbox, OutboxError
    from fedlearn.attestation.session import coordinator_account, run_contracts
    from fedlearn.attestation.signing import WalletError
    from fedlearn.config import AttestationConfig

    try:
        cfg = RunConfig.load(run / "config.toml").attestation
        if chain is not None:
            cfg = AttestationConfig(**{**cfg.__dict__, "chain": chain})
        coordinator = coordinator_account(cfg, run)
        opened, contracts = run_contracts(run, chain=chain, coordinator=coordinator)
    except (FileNotFoundError, ConfigError, ChainError, WalletError, ValueError) as exc:
        raise _fail(str(exc)) from None
    outbox = Outbox(path=run / "attestations" / "outbox.sqlite")
    try:
        result = outbox.flush(contracts, deadline=seconds)
    except (OutboxError, ChainError) as exc:
        raise _fail(str(exc)) from None
    finally:
        outbox.close()
        opened.close()
    out.print(f"posted rounds {[r for _, r in result.confirmed]}; {len(result.pending)} pending")
    if result.pending:
        raise _fail(f"still pending: {result.error}", "try again when the chain is reachable")


@app.command()
def report(
    run: Annotated[Path, typer.Option(help="The run directory (finished, running or failed).")],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Where to write (default RUN_DIR/report.html).")
    ] = None,
    open_page: Annotated[bool, typer.Option("--open", help="Open it in a browser.")] = False,
    client: Annotated[str | None, typer.Option(help="A holder's address to highlight.")] = None,
) -> None:
    """Write the run's report: one static HTML page (no server, no network)."""
    from fedlearn.report import write_report

    if not run.is_dir():
        raise _fail(f"no run directory at {run}")
    path = write_report(run, out=out_file, client=client)
    if not path.exists():
        raise _fail(f"could not write {path}")
    typer.echo(str(path))
    if open_page:
        typer.launch(path.resolve().as_uri())


@app.command()
def budget(
    data: Annotated[Path, typer.Option(help="Your CSV file, NPZ file or image folder.")],
    config: Annotated[Path, typer.Option(help="The run's config (its schema reads your file).")],
    ledger_dir: Annotated[
        Path | None, typer.Option(help="Where your privacy ledger lives (default ~/.fedlearn).")
    ] = None,
    epsilon_budget: Annotated[
        float | None, typer.Option(help="Your total ε, to show what remains.")
    ] = None,
) -> None:
    """Show what has been spent on your data's records, per run and round, and what remains.

    The ledger is keyed by the records themselves, so a copy or re-export of
    the same rows shows the same spending. Nothing is contacted or written.
    """
    from fedlearn.data import load_file, schema_for
    from fedlearn.privacy.holder import default_ledger_dir, spending_on
    from fedlearn.privacy.ledger import LedgerError
    from fedlearn.reporting import budget_table

    try:
        cfg = RunConfig.load(config)
        records = load_file(data, schema_for(cfg.data))
        spending = spending_on(ledger_dir or default_ledger_dir(), records)
    except (ConfigError, DataError, OSError) as exc:
        raise _fail(str(exc), "check --data and --config") from None
    except LedgerError as exc:
        raise _fail(str(exc)) from None
    out.print(budget_table(spending, data=str(data), epsilon_budget=epsilon_budget))


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted; resume with --resume RUN_DIR")
        sys.exit(130)

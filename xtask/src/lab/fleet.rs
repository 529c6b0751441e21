//! `cargo xtask lab fleet`: N guests, `sg1` to `sgN`, each with the package
//! installed and `[fleet]` in its packaged config, sharing one etcd that runs
//! on this machine's loopback. A guest reaches it at 10.0.2.100:2379 through
//! qemu's user network (`restrict=on`: nothing else is reachable, and no
//! packet leaves the loopback), each guest through a relay of its own that
//! `lab-partition` cuts. The lab's control, 10.0.2.100:7000 in every guest,
//! carries `lab-on` (a command run on another guest) and `lab-partition`;
//! the guest side is tests/lab/fleet-*.sh, lab-on and lab-partition.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    Kernel, Userland,
    guest::{Guest, Line},
    image, package, payload_dir,
};
use crate::{
    etcd::{Etcd, free_port},
    step, workspace_root,
};

/// The guests' boot, the script and everything it asks of the others.
const FLEET_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// How long a `lab-on` command may run on its guest.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * 60);

pub fn run(hosts: usize, kernel: Kernel, userland: Userland, script: &Path) -> Result<()> {
    if !(1..=9).contains(&hosts) {
        bail!("--hosts {hosts}: the fleet lab boots 1 to 9 guests (sg1 to sg9)");
    }
    let text = fs::read(script).with_context(|| format!("reading {}", script.display()))?;
    let deb = package(None, None)?;
    let image = image::ensure(userland)?;
    let work = workspace_root().join("target/lab/fleet");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let port = free_port(0)?;
    let peer = free_port(port)?;
    let _etcd = Etcd::start(&work, port, peer)?;
    let names: Vec<String> = (1..=hosts).map(|i| format!("sg{i}")).collect();
    let control = Control::new(&names);
    let mut relays = HashMap::new();
    let mut guests = Vec::new();
    for name in &names {
        let relay = Relay::start(port)?;
        let control_port = control.listen(name)?;
        let payload = payload_dir(&format!("fleet-{name}"))?;
        fs::copy(&deb, payload.join("stopguard.deb"))?;
        fs::write(payload.join("fleet-host"), format!("{name}\n"))?;
        fs::write(payload.join("script.sh"), &text)?;
        fs::write(payload.join("boot.sh"), "exec bash /lab/fleet-boot.sh\n")?;
        let netdev = format!(
            "user,restrict=on,\
             guestfwd=tcp:10.0.2.100:2379-cmd:socat - TCP:127.0.0.1:{},\
             guestfwd=tcp:10.0.2.100:7000-cmd:socat - TCP:127.0.0.1:{control_port}",
            relay.port
        );
        let guest = Guest::new(&image, kernel, &work.join(name))?
            .sized(1, 1536)
            .with_network(netdev);
        relays.insert(name.clone(), relay);
        guests.push((name.clone(), guest, payload));
    }
    control.set_relays(relays);
    step(&format!(
        "fleet lab: {hosts} {} guests on {} sharing etcd on 127.0.0.1:{port}; {} runs on sg1",
        userland.as_str(),
        kernel.as_str(),
        script.display()
    ));
    let done = AtomicBool::new(false);
    let exit = std::thread::scope(|scope| {
        let mut boots = Vec::new();
        for (name, guest, payload) in &guests {
            let done = &done;
            boots.push(scope.spawn(move || {
                let first = name == "sg1";
                let mut in_script = false;
                let boot =
                    guest.boot_until(payload, FLEET_TIMEOUT, Some(done), &mut |line| match line {
                        Line::Payload("stopguard-lab: script") if first => in_script = true,
                        Line::Payload(text) if in_script => println!("{text}"),
                        Line::Payload(text) => eprintln!("    {name}: {text}"),
                        Line::Console(_) => {}
                    });
                if first {
                    // The script's end ends the lab: the others are stopped.
                    done.store(true, Ordering::SeqCst);
                }
                (name.clone(), boot)
            }));
        }
        let mut exit = None;
        for boot in boots {
            let (name, boot) = boot.join().expect("a guest's thread panicked");
            match boot {
                Ok(boot) if name == "sg1" => {
                    exit = Some(boot.exit.ok_or_else(|| {
                        anyhow::anyhow!(
                            "sg1 did not report the script's end (serial log: {})",
                            boot.log.display()
                        )
                    }));
                }
                Ok(_) => {}
                Err(e) => eprintln!("    {name}: {e:#}"),
            }
        }
        exit.unwrap_or_else(|| Err(anyhow::anyhow!("sg1 did not boot")))
    })?;
    std::io::stdout().flush()?;
    step(&format!("fleet lab: {} exited {exit}", script.display()));
    std::process::exit(exit)
}

/// A TCP relay from a guest's forward to etcd that `lab-partition` cuts:
/// open connections are shut and new ones closed at once until restored.
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(to: u16) -> Result<Relay> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding a relay to etcd")?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (cut2, open2) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if cut2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                for (mut from, mut into) in [(client.try_clone(), s), (server.try_clone(), c)]
                    .into_iter()
                    .filter_map(|(a, b)| Some((a.ok()?, b)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(Shutdown::Both);
                    });
                }
                let mut open = open2.lock().unwrap();
                open.retain(|s| s.peer_addr().is_ok());
                open.push(client);
                open.push(server);
            }
        });
        Ok(Relay { port, cut, open })
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            for stream in self.open.lock().unwrap().drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

/// One answer to a guest's request, as `lab-on` prints it: the exit status,
/// then stdout and stderr in base64 (`-` when empty).
fn answer(status: i32, out: &str, err: &str) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            base64::engine::general_purpose::STANDARD.encode(s)
        }
    };
    format!("{status} {} {}\n", b64(out), b64(err))
}

/// A guest's worker: the connection its commands go down, and who waits
/// for each command's answer.
struct Worker {
    stream: TcpStream,
    waiting: Arc<Mutex<HashMap<u64, mpsc::Sender<String>>>>,
}

/// The lab's control: one listener per guest (so a connection says which
/// guest it comes from), the guests' workers, the relays to cut.
#[derive(Clone)]
struct Control {
    names: Arc<Vec<String>>,
    workers: Arc<(Mutex<HashMap<String, Worker>>, Condvar)>,
    relays: Arc<Mutex<HashMap<String, Relay>>>,
    next_id: Arc<AtomicU64>,
}

impl Control {
    fn new(names: &[String]) -> Control {
        Control {
            names: Arc::new(names.to_vec()),
            workers: Arc::default(),
            relays: Arc::default(),
            next_id: Arc::default(),
        }
    }

    fn set_relays(&self, relays: HashMap<String, Relay>) {
        *self.relays.lock().unwrap() = relays;
    }

    /// Listens for guest `name`'s connections; returns the port.
    fn listen(&self, name: &str) -> Result<u16> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding the lab's control")?;
        let port = listener.local_addr()?.port();
        let (control, name) = (self.clone(), name.to_string());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (control, name) = (control.clone(), name.clone());
                std::thread::spawn(move || {
                    if let Err(e) = control.serve(&name, stream) {
                        eprintln!("    lab control ({name}): {e:#}");
                    }
                });
            }
        });
        Ok(port)
    }

    /// One connection of guest `from`: a worker's, or one request.
    fn serve(&self, from: &str, stream: TcpStream) -> Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut first = String::new();
        reader.read_line(&mut first)?;
        let words: Vec<&str> = first.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["worker"] => return self.worker(from, stream, reader),
            ["on", host, command] => self.on(host, command),
            ["partition", host, how] => self.partition(host, how),
            ["ready"] => self.ready(),
            _ => answer(
                2,
                "",
                &format!("lab control: not a request: {}\n", first.trim()),
            ),
        };
        (&stream).write_all(reply.as_bytes())?;
        Ok(())
    }

    /// Guest `from`'s worker: registered, then its answers read until it
    /// goes (its guest stopped).
    fn worker(&self, from: &str, stream: TcpStream, reader: BufReader<TcpStream>) -> Result<()> {
        let waiting: Arc<Mutex<HashMap<u64, mpsc::Sender<String>>>> = Arc::default();
        {
            let (workers, changed) = &*self.workers;
            workers.lock().unwrap().insert(
                from.to_string(),
                Worker {
                    stream,
                    waiting: waiting.clone(),
                },
            );
            changed.notify_all();
        }
        for line in reader.lines() {
            let line = line?;
            let Some((id, rest)) = line.split_once(' ') else {
                continue;
            };
            if let Some(tx) = id
                .parse()
                .ok()
                .and_then(|id: u64| waiting.lock().unwrap().remove(&id))
            {
                let _ = tx.send(format!("{rest}\n"));
            }
        }
        // Its waiters' senders drop with it: they answer "gone".
        self.workers.0.lock().unwrap().remove(from);
        Ok(())
    }

    /// `lab-on HOST CMD`: the command (base64) run by HOST's worker.
    fn on(&self, host: &str, command: &str) -> String {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        {
            let workers = self.workers.0.lock().unwrap();
            let Some(worker) = workers.get(host) else {
                return answer(
                    255,
                    "",
                    &format!(
                        "lab-on: no guest {host} is up (the lab's guests: {})\n",
                        self.names.join(" ")
                    ),
                );
            };
            worker.waiting.lock().unwrap().insert(id, tx);
            if (&worker.stream)
                .write_all(format!("{id} {command}\n").as_bytes())
                .is_err()
            {
                return answer(255, "", &format!("lab-on: {host} is gone\n"));
            }
        }
        match rx.recv_timeout(COMMAND_TIMEOUT) {
            Ok(reply) => reply,
            Err(mpsc::RecvTimeoutError::Timeout) => answer(
                255,
                "",
                &format!(
                    "lab-on: {host} did not answer in {} s\n",
                    COMMAND_TIMEOUT.as_secs()
                ),
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                answer(255, "", &format!("lab-on: {host} went down\n"))
            }
        }
    }

    /// `lab-partition HOST on|off`: HOST's path to etcd cut (on) or back.
    fn partition(&self, host: &str, how: &str) -> String {
        let cut = match how {
            "on" => true,
            "off" => false,
            _ => {
                return answer(
                    2,
                    "",
                    &format!("lab-partition: {how}: expected on or off\n"),
                );
            }
        };
        match self.relays.lock().unwrap().get(host) {
            Some(relay) => {
                relay.set_cut(cut);
                step(&format!(
                    "fleet lab: {host}'s path to etcd {}",
                    if cut { "cut" } else { "restored" }
                ));
                answer(0, "", "")
            }
            None => answer(
                2,
                "",
                &format!(
                    "lab-partition: no guest {host} (the lab's guests: {})\n",
                    self.names.join(" ")
                ),
            ),
        }
    }

    /// Waits until every guest's worker is up: every guest has booted, has
    /// the package installed and its agent on etcd.
    fn ready(&self) -> String {
        let deadline = Instant::now() + FLEET_TIMEOUT;
        let (workers, changed) = &*self.workers;
        let mut up = workers.lock().unwrap();
        while up.len() < self.names.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let missing: Vec<&str> = self
                    .names
                    .iter()
                    .filter(|n| !up.contains_key(*n))
                    .map(String::as_str)
                    .collect();
                return answer(1, "", &format!("lab: not up: {}\n", missing.join(" ")));
            }
            up = changed.wait_timeout(up, left).unwrap().0;
        }
        step(&format!("fleet lab: all {} guests up", self.names.len()));
        answer(0, "", "")
    }
}

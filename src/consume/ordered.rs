//! Ordered lanes: one task per partition handling its messages in order, in-order commits.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::{Id, JoinError, JoinSet};
use tracing::instrument::WithSubscriber;

use super::handle::{DeadLetter, Failure, Handle};
use super::report::Core;
use super::run::Run;
use super::source::{Event, Lane, Ordered, OrderedSettler, OrderedSource, Positioned, Progress};
use super::ConsumeError;
use crate::classify::Decision;
use crate::process::Retrying;
use opentelemetry::trace::TraceContextExt;

/// Events taken from the source per wake-up of the dispatcher, at most.
const DRAIN: usize = 64;

impl<Src, Set> Run<Src::Message> for Ordered<Src, Set>
where
    Src: OrderedSource,
    Set: OrderedSettler,
{
    async fn run<H>(
        self,
        handler: H,
        max_batch: usize,
        core: Core,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ConsumeError>
    where
        H: Handle<Src::Message> + Clone,
    {
        run_ordered(
            self.source,
            self.settler,
            handler,
            max_batch,
            core,
            shutdown,
        )
        .await
    }
}

/// Runs an ordered source until `shutdown` resolves or the source fails for good.
async fn run_ordered<Src, Set, H>(
    mut source: Src,
    settler: Set,
    handler: H,
    max_batch: usize,
    core: Core,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConsumeError>
where
    Src: OrderedSource,
    Set: OrderedSettler,
    H: Handle<Src::Message> + Clone,
{
    let (control, mut control_rx) = mpsc::unbounded_channel();
    let mut commit_tick = tokio::time::interval(core.options.commit_interval);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let drain_deadline = core.options.drain_deadline;
    let mut driver = Driver {
        permits: Arc::new(Semaphore::new(core.options.max_concurrency)),
        core: Arc::new(core),
        handler,
        settler: Arc::new(settler),
        max_batch,
        control,
        lanes: HashMap::default(),
        assigned: HashSet::new(),
        tasks: HashMap::new(),
        retiring: HashMap::new(),
        workers: JoinSet::new(),
        shutting_down: false,
        first_failure: None,
        fatal: None,
    };
    tokio::pin!(shutdown);

    while driver.fatal.is_none() {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = driver.workers.join_next_with_id() => driver.worker_done(done, &mut source),
            Some(lane) = control_rx.recv() => driver.resume(&lane, &mut source),
            _ = commit_tick.tick() => driver.commit(false),
            event = source.next() => {
                driver.event(event, &mut source);
                // Take what the source already has without a round through `select!`.
                for _ in 1..DRAIN {
                    match source.next().now_or_never() {
                        Some(event) => driver.event(event, &mut source),
                        None => break,
                    }
                }
                // Let the lanes run after every burst: a source with messages ready would
                // otherwise fill their buffers until they are paused, and a paused Kafka
                // partition throws its fetched messages away and fetches them again.
                tokio::task::yield_now().await;
            }
        }
    }

    // Stop fetching; let running calls finish until the deadline; cancel the rest.
    driver.shutting_down = true;
    driver.stop_all();
    let deadline = tokio::time::sleep(drain_deadline);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            done = driver.workers.join_next_with_id() => match done {
                Some(done) => driver.worker_done(done, &mut source),
                None => break,
            },
            () = &mut deadline => {
                tracing::warn!(
                    running = driver.workers.len(), deadline = ?drain_deadline,
                    "drain deadline passed: cancelling running handler calls, their messages stay unsettled"
                );
                driver.workers.abort_all();
                while let Some(done) = driver.workers.join_next_with_id().await {
                    driver.worker_done(done, &mut source);
                }
                break;
            }
        }
    }
    driver.commit(true);
    // A consumer that returned holds no partition stopped any more, and reports no lag.
    for (lane, slot) in &driver.lanes {
        if matches!(slot.state, SlotState::Stopped) {
            driver.core.stopped(&lane.topic, lane.partition, false);
        }
    }
    for lane in &driver.assigned {
        driver.core.revoked(&lane.topic, lane.partition);
    }
    driver.core.reporter.remove_all();
    drop(source);
    match driver.fatal.or(driver.first_failure) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

struct Driver<M, H, Set: OrderedSettler> {
    core: Arc<Core>,
    handler: H,
    settler: Arc<Set>,
    permits: Arc<Semaphore>,
    max_batch: usize,
    control: mpsc::UnboundedSender<Lane>,
    lanes: HashMap<Lane, Slot<M>, foldhash::fast::RandomState>,
    assigned: HashSet<Lane>,
    tasks: HashMap<Id, Lane>,
    /// Workers of revoked lanes still finishing a call; a new worker of the same lane waits
    /// for them, so order holds across a revoke and re-assign.
    retiring: HashMap<Lane, oneshot::Receiver<()>>,
    workers: JoinSet<LaneEnd>,
    shutting_down: bool,
    first_failure: Option<ConsumeError>,
    fatal: Option<ConsumeError>,
}

/// A lane as the dispatcher sees it.
struct Slot<M> {
    state: SlotState<M>,
    paused: bool,
    /// The offset after the last message the lane finished, written by its worker.
    progress: Progress,
    committed: Option<i64>,
}

enum SlotState<M> {
    Running {
        task: Id,
        tx: mpsc::UnboundedSender<M>,
        buffered: Arc<AtomicUsize>,
        stop: watch::Sender<bool>,
        done: oneshot::Receiver<()>,
    },
    /// A failure decided `Stop` here: paused, nothing more is handed out or committed past.
    Stopped,
}

impl<M, H, Set> Driver<M, H, Set>
where
    M: Positioned + Clone + Send + Sync + 'static,
    H: Handle<M> + Clone,
    Set: OrderedSettler,
{
    fn event<Src: OrderedSource<Message = M>>(&mut self, event: Event<M>, source: &mut Src) {
        match event {
            Event::Message(message) => self.route(message, source),
            Event::Assigned(lanes) => {
                self.core.assigned();
                if !lanes.is_empty() {
                    tracing::info!(
                        system = self.core.system, group = %self.core.group,
                        partitions = %Lanes(&lanes), "partitions assigned"
                    );
                }
                for lane in lanes {
                    match self.lanes.get(&lane).map(|s| &s.state) {
                        // A broker may keep or drop a pause across reassignment.
                        Some(SlotState::Stopped) => source.pause(&lane),
                        _ => source.resume(&lane),
                    }
                    self.assigned.insert(lane);
                }
            }
            Event::Revoked(lanes) => {
                tracing::info!(
                    system = self.core.system, group = %self.core.group,
                    partitions = %Lanes(&lanes), "partitions revoked"
                );
                // Commit what finished while the lanes are still ours.
                self.commit(false);
                for lane in lanes {
                    self.assigned.remove(&lane);
                    self.retire(&lane);
                    self.core.revoked(&lane.topic, lane.partition);
                }
            }
            Event::Fatal(error) => {
                tracing::error!(%error, system = self.core.system, "consumer failed");
                self.fatal.get_or_insert(ConsumeError::Broker(error));
            }
        }
    }

    fn route<Src: OrderedSource<Message = M>>(&mut self, message: M, source: &mut Src) {
        let lane = Lane {
            topic: Arc::clone(message.lane_topic()),
            partition: message.lane_partition(),
        };
        // One look-up for a lane that exists, as every message but a lane's first finds it.
        let slot = match self.lanes.get_mut(&lane) {
            Some(slot) => slot,
            None => {
                self.spawn(&lane);
                let Some(slot) = self.lanes.get_mut(&lane) else {
                    return;
                };
                slot
            }
        };
        let SlotState::Running { tx, buffered, .. } = &slot.state else {
            // Fetched before the pause took effect: left unsettled, like everything after the
            // message the lane stopped at.
            return;
        };
        let waiting = buffered.fetch_add(1, Ordering::AcqRel) + 1;
        if tx.send(message).is_err() {
            // The worker has ended (its outcome is on its way); the message stays unsettled.
            return;
        }
        if waiting >= self.core.options.max_buffered && !slot.paused {
            slot.paused = true;
            source.pause(&lane);
        }
    }

    fn spawn(&mut self, lane: &Lane) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = oneshot::channel();
        let buffered = Arc::new(AtomicUsize::new(0));
        let progress = Progress::new();
        self.settler.track(lane, &progress);
        let worker = LaneWorker {
            lane: lane.clone(),
            rx,
            buffered: Arc::clone(&buffered),
            resume_at: self.core.options.max_buffered / 2,
            control: self.control.clone(),
            stop: stop_rx,
            permits: Arc::clone(&self.permits),
            progress: progress.clone(),
            max_batch: self.max_batch,
            predecessor: self.retiring.remove(lane),
            core: Arc::clone(&self.core),
            _done: done_tx,
        };
        // Lanes report to the subscriber of the task that runs the consumer.
        let task = self
            .workers
            .spawn(worker.run(self.handler.clone()).with_current_subscriber())
            .id();
        self.tasks.insert(task, lane.clone());
        self.lanes.insert(
            lane.clone(),
            Slot {
                state: SlotState::Running {
                    task,
                    tx,
                    buffered,
                    stop: stop_tx,
                    done: done_rx,
                },
                paused: false,
                progress,
                committed: None,
            },
        );
    }

    fn resume<Src: OrderedSource<Message = M>>(&mut self, lane: &Lane, source: &mut Src) {
        let Some(slot) = self.lanes.get_mut(lane) else {
            return;
        };
        if slot.paused && matches!(slot.state, SlotState::Running { .. }) {
            slot.paused = false;
            source.resume(lane);
        }
    }

    /// A revoked lane's worker finishes its running call; what it buffered is dropped.
    fn retire(&mut self, lane: &Lane) {
        match self.lanes.remove(lane) {
            Some(Slot {
                state: SlotState::Running { stop, done, .. },
                ..
            }) => {
                let _ = stop.send(true);
                self.retiring.insert(lane.clone(), done);
            }
            Some(Slot {
                state: SlotState::Stopped,
                ..
            }) => self.core.stopped(&lane.topic, lane.partition, false),
            None => {}
        }
    }

    fn stop_all(&mut self) {
        for slot in self.lanes.values() {
            if let SlotState::Running { stop, .. } = &slot.state {
                let _ = stop.send(true);
            }
        }
    }

    fn worker_done<Src: OrderedSource<Message = M>>(
        &mut self,
        done: Result<(Id, LaneEnd), JoinError>,
        source: &mut Src,
    ) {
        let (task, end) = match done {
            Ok(done) => done,
            Err(join) => {
                let task = join.id();
                if let Some(lane) = self.tasks.remove(&task) {
                    if !join.is_cancelled() {
                        // Handler panics are caught in the lane: this is a bug of the core.
                        tracing::error!(error = %join, topic = %lane.topic, partition = lane.partition, "consumer lane failed");
                        self.first_failure
                            .get_or_insert(ConsumeError::Broker(Box::new(join)));
                    }
                }
                return;
            }
        };
        let Some(lane) = self.tasks.remove(&task) else {
            return;
        };
        let current = self
            .lanes
            .get(&lane)
            .is_some_and(|s| matches!(&s.state, SlotState::Running { task: t, .. } if *t == task));
        match end {
            LaneEnd::Done => {
                if current && !self.shutting_down {
                    self.lanes.remove(&lane);
                }
            }
            LaneEnd::Stopped { offset, failure } if current => {
                if let Some(slot) = self.lanes.get_mut(&lane) {
                    slot.state = SlotState::Stopped;
                    slot.paused = true;
                }
                self.first_failure
                    .get_or_insert(ConsumeError::PartitionStopped {
                        destination: lane.topic.to_string(),
                        partition: lane.partition,
                        offset,
                        error_type: failure.error_type.into_owned(),
                        source: failure.error,
                    });
                source.pause(&lane);
            }
            LaneEnd::Stopped { .. } => self.core.stopped(&lane.topic, lane.partition, false),
        }
        if !current && !self.assigned.contains(&lane) && !self.lanes.contains_key(&lane) {
            // A revoked lane's last message may have re-created its series.
            self.core.revoked(&lane.topic, lane.partition);
        }
    }

    /// Commits every lane that advanced since the last commit, timed as a settle.
    fn commit(&mut self, last: bool) {
        let done: Vec<(Lane, i64)> = self
            .lanes
            .iter()
            .filter_map(|(lane, slot)| {
                let next = slot.progress.get()?;
                (Some(next) > slot.committed).then(|| (lane.clone(), next))
            })
            .collect();
        // The final commit is always made: the broker may hold work stored since the last one.
        if done.is_empty() && !last {
            return;
        }
        let started = SystemTime::now();
        let clock = Instant::now();
        let result = self.settler.commit(&done, last);
        let elapsed = clock.elapsed();
        if let Err(error) = &result {
            tracing::warn!(%error, system = self.core.system, last, "commit failed");
        }
        let mut destinations: Vec<&Arc<str>> = done.iter().map(|(lane, _)| &lane.topic).collect();
        destinations.sort_unstable();
        destinations.dedup();
        for destination in destinations {
            self.core
                .settled(destination, started, elapsed, result.is_err());
        }
        if result.is_ok() {
            for (lane, next) in &done {
                if let Some(slot) = self.lanes.get_mut(lane) {
                    slot.committed = Some(*next);
                }
            }
        }
    }
}

/// Lanes as `topic[0,1] other[2]`, for the log.
struct Lanes<'a>(&'a [Lane]);

impl std::fmt::Display for Lanes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut by_topic: std::collections::BTreeMap<&str, Vec<i32>> = Default::default();
        for lane in self.0 {
            by_topic
                .entry(&lane.topic)
                .or_default()
                .push(lane.partition);
        }
        for (i, (topic, mut partitions)) in by_topic.into_iter().enumerate() {
            partitions.sort_unstable();
            let list: Vec<String> = partitions.iter().map(i32::to_string).collect();
            write!(
                f,
                "{}{topic}[{}]",
                if i > 0 { " " } else { "" },
                list.join(",")
            )?;
        }
        Ok(())
    }
}

/// How a lane worker ended.
enum LaneEnd {
    /// Asked to stop, or its buffer closed.
    Done,
    /// A failure decided `Stop` at `offset`.
    Stopped { offset: i64, failure: Failure },
}

/// What a delivery came to.
enum Step {
    Settled,
    Interrupted,
    Stopped(i64, Failure),
}

/// Handles one lane's messages, in order.
struct LaneWorker<M> {
    lane: Lane,
    rx: mpsc::UnboundedReceiver<M>,
    buffered: Arc<AtomicUsize>,
    resume_at: usize,
    control: mpsc::UnboundedSender<Lane>,
    stop: watch::Receiver<bool>,
    permits: Arc<Semaphore>,
    progress: Progress,
    max_batch: usize,
    predecessor: Option<oneshot::Receiver<()>>,
    core: Arc<Core>,
    /// Dropped when the worker ends, which releases a successor waiting on `predecessor`.
    _done: oneshot::Sender<()>,
}

impl<M: Positioned> LaneWorker<M> {
    async fn run<H: Handle<M>>(mut self, mut handler: H) -> LaneEnd {
        if let Some(predecessor) = self.predecessor.take() {
            tokio::select! {
                _ = predecessor => {}
                _ = self.stop.wait_for(|stop| *stop) => return LaneEnd::Done,
            }
        }
        let mut work = Vec::with_capacity(self.max_batch.min(64));
        loop {
            if *self.stop.borrow() {
                return LaneEnd::Done;
            }
            let first = match self.rx.try_recv() {
                Ok(message) => message,
                Err(mpsc::error::TryRecvError::Disconnected) => return LaneEnd::Done,
                Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                    biased;
                    _ = self.stop.wait_for(|stop| *stop) => return LaneEnd::Done,
                    message = self.rx.recv() => match message {
                        Some(message) => message,
                        None => return LaneEnd::Done,
                    },
                },
            };
            work.clear();
            work.push(first);
            while work.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(message) => work.push(message),
                    Err(_) => break,
                }
            }
            self.took(work.len());
            match self.deliver(&mut handler, &work).await {
                Step::Settled => {}
                Step::Interrupted => return LaneEnd::Done,
                Step::Stopped(offset, failure) => return LaneEnd::Stopped { offset, failure },
            }
        }
    }

    /// Counts messages out of the buffer; asks for the lane to be resumed when the buffer
    /// drains to `resume_at` (the dispatcher ignores this when it had not paused it).
    fn took(&self, n: usize) {
        let before = self.buffered.fetch_sub(n, Ordering::AcqRel);
        let after = before.saturating_sub(n);
        if before > self.resume_at && after <= self.resume_at {
            let _ = self.control.send(self.lane.clone());
        }
    }

    fn advance(&self, next: i64) {
        self.progress.set(next);
    }

    /// Hands `work` to the handler and carries out the decision on its result.
    async fn deliver<H: Handle<M>>(&mut self, handler: &mut H, work: &[M]) -> Step {
        let (Some(first), Some(last)) = (work.first(), work.last()) else {
            return Step::Settled;
        };
        let (first, last) = (first.lane_offset(), last.lane_offset());
        let mut attempt = 0u32;
        // The process span of the attempt before: a retry continues its trace.
        let mut retry_of = None;
        loop {
            attempt = attempt.saturating_add(1);
            if *self.stop.borrow() {
                return Step::Interrupted;
            }
            let permit = match self.permits.try_acquire() {
                // The usual case: a permit is free, and the stop signal was just checked.
                Ok(permit) => Some(permit),
                // Shutdown or a revoke may come while the lane waits for its turn.
                Err(_) => tokio::select! {
                    biased;
                    _ = self.stop.wait_for(|stop| *stop) => return Step::Interrupted,
                    permit = self.permits.acquire() => permit.ok(),
                },
            };
            let result = if attempt == 1 {
                handler.handle(work, attempt).await
            } else {
                Retrying::new(handler.handle(work, attempt), retry_of.clone()).await
            };
            drop(permit);
            let failure = match result {
                Ok(()) => {
                    self.advance(last + 1);
                    return Step::Settled;
                }
                Err(failure) => failure,
            };
            let failed = crate::process::take_failed();
            if let Some((cx, _)) = &failed {
                let span = cx.span();
                if span.span_context().is_valid() {
                    retry_of = Some(span.span_context().clone());
                }
            }
            // The core's own lines about the message carry its trace and id.
            let about = |failed: &Option<(opentelemetry::Context, crate::scope::MessageScope)>| {
                failed.as_ref().map(|(cx, _)| cx.clone().attach())
            };
            let message_id = failed
                .as_ref()
                .and_then(|(_, scope)| scope.message_id().map(str::to_owned))
                .unwrap_or_default();
            let decision = match handler.decide(&failure, attempt) {
                Decision::DeadLetter if !handler.dead_letters() => {
                    let _about = about(&failed);
                    tracing::error!(
                        topic = %self.lane.topic, partition = self.lane.partition, offset = first,
                        message_id, error_type = %failure.error_type,
                        "dead-letter decision without a dead-letter destination: the partition stops instead"
                    );
                    Decision::Stop
                }
                decision => decision,
            };
            match decision {
                Decision::Ack => {
                    self.advance(last + 1);
                    return Step::Settled;
                }
                Decision::Reject => {
                    let _about = about(&failed);
                    tracing::warn!(
                        topic = %self.lane.topic, partition = self.lane.partition, offset = first,
                        message_id, error_type = %failure.error_type, error = %failure.error,
                        "handler failed, message rejected: committed past"
                    );
                    self.advance(last + 1);
                    return Step::Settled;
                }
                Decision::Retry { after } => {
                    self.core.metrics.record_retry(
                        self.core.system,
                        &self.lane.topic,
                        &self.core.group,
                        &failure.error_type,
                    );
                    {
                        let _about = about(&failed);
                        tracing::debug!(
                            topic = %self.lane.topic, partition = self.lane.partition, offset = first,
                            message_id, error_type = %failure.error_type, error = %failure.error,
                            ?after, attempt, "handler failed, retrying"
                        );
                    }
                    tokio::select! {
                        () = tokio::time::sleep(after) => {}
                        _ = self.stop.wait_for(|stop| *stop) => return Step::Interrupted,
                    }
                }
                Decision::DeadLetter => {
                    if !self
                        .dead_letter(handler.sink(), work, &failure, attempt, &failed)
                        .await
                    {
                        return Step::Interrupted;
                    }
                    self.advance(last + 1);
                    return Step::Settled;
                }
                Decision::Stop => {
                    // Shown at once, not when the consumer returns.
                    self.core
                        .stopped(&self.lane.topic, self.lane.partition, true);
                    let _about = about(&failed);
                    tracing::error!(
                        topic = %self.lane.topic, partition = self.lane.partition, offset = first,
                        group = %self.core.group, message_id, error_type = %failure.error_type,
                        error = %failure.error,
                        "handler failed, partition stopped: nothing at or after this offset is committed"
                    );
                    return Step::Stopped(first, failure);
                }
            }
        }
    }

    /// Publishes the dead-letter copy of each message of `work`; a publish that fails is tried
    /// again after a backoff while the partition waits (the original is never committed past
    /// before its copy is acknowledged). `false` when shutdown or a revoke came first.
    async fn dead_letter<D: DeadLetter<M>>(
        &mut self,
        sink: D,
        work: &[M],
        failure: &Failure,
        attempts: u32,
        failed: &Option<(opentelemetry::Context, crate::scope::MessageScope)>,
    ) -> bool {
        let mut sent = 0;
        let mut tries = 0u32;
        loop {
            while let Some(message) = work.get(sent) {
                match sink
                    .send(
                        message,
                        failure,
                        attempts,
                        &self.core.group,
                        failed.as_ref(),
                    )
                    .await
                {
                    Ok(()) => {
                        self.core.metrics.record_dead_letter(
                            self.core.system,
                            &self.lane.topic,
                            &self.core.group,
                            &failure.error_type,
                        );
                        let _about = failed.as_ref().map(|(cx, _)| cx.clone().attach());
                        tracing::warn!(
                            topic = %self.lane.topic, partition = self.lane.partition,
                            offset = message.lane_offset(), error_type = %failure.error_type,
                            error = %failure.error, attempts, "handler failed, message dead-lettered"
                        );
                        sent += 1;
                    }
                    Err(error) => {
                        tries = tries.saturating_add(1);
                        let _about = failed.as_ref().map(|(cx, _)| cx.clone().attach());
                        tracing::warn!(
                            topic = %self.lane.topic, partition = self.lane.partition,
                            offset = message.lane_offset(), %error,
                            "dead-letter publish failed: the message stays uncommitted, trying again"
                        );
                        break;
                    }
                }
            }
            if sent == work.len() {
                return true;
            }
            let after = super::dead_letter_backoff(tries);
            tokio::select! {
                () = tokio::time::sleep(after) => {}
                _ = self.stop.wait_for(|stop| *stop) => return false,
            }
        }
    }
}

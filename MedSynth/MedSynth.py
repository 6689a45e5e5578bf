"""MedSynth: synthesize a T2 brain MRI from a T1ce volume in 3D Slicer, and train new models.

A thin GUI over the Qt-free package ``MedSynthLogic`` (installed next to this file by the extension, importable from
PythonSlicer and from plain Python). Long work runs in a ``medsynth`` child process (``MedSynthLogic.jobs``) so the
GUI stays responsive and Cancel/Stop always work; MRML work (loading, geometry, views, plots) is in
``MedSynthLogic.mrml``.

Naming: Slicer's convention calls a module's logic class ``<Module>Logic``, i.e. ``MedSynthLogic``, which is the name
of the core package. A class of that name here would shadow the package for everyone who does
``from MedSynth import *`` (as Slicer's module reloading does), so the logic class is ``MedSynthModuleLogic`` and the
package is imported as ``core``.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from slicer import vtkMRMLScalarVolumeNode


def _importCore() -> Any:
    """Import the core package; from a source checkout (module path ``<repo>/MedSynth``) add ``<repo>`` first."""
    try:
        import MedSynthLogic
    except ImportError:
        repo = str(Path(__file__).resolve().parent.parent)
        if (Path(repo) / "MedSynthLogic" / "__init__.py").is_file() and repo not in sys.path:
            sys.path.insert(0, repo)
        import MedSynthLogic
    return MedSynthLogic


core = _importCore()
from MedSynthLogic import jobs, mrml  # noqa: E402
from MedSynthLogic.errors import MedSynthError  # noqa: E402

DEVICES = ["auto", "cuda", "cpu"]
TRAIN_PRECISIONS = ["auto", "bf16", "fp32"]
SYNTHETIC_SUFFIX = "synthetic T2"
#: Packages Slicer already ships; never reinstalled (pinned to the running versions while installing the rest).
PROTECTED_PACKAGES = ("numpy", "SimpleITK")


#
# MedSynth
#


class MedSynth(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSynth")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSynth developers"]
        self.parent.helpText = _("""
Synthesizes a T2-weighted brain MRI from a contrast-enhanced T1 (T1ce) volume with a 3D adversarial network
refined by auto-context stages, and trains new models from paired data prepared with <code>medsynth prepare</code>.
Inputs should be skull-stripped and roughly 1 mm isotropic like BraTS. The synthetic image is <b>not</b> for
diagnosis. See the <a href="https://github.com/medsynth/SlicerMedSynth">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Method: D. Nie, R. Trullo, J. Lian, L. Wang, C. Petitjean, S. Ruan, Q. Wang, D. Shen,
"Medical Image Synthesis with Deep Convolutional Adversarial Networks", IEEE Transactions on Biomedical
Engineering 65(12), 2018. The bundled model was trained on the BraTS data (B. H. Menze et al., IEEE TMI 2015;
S. Bakas et al., Scientific Data 2017 and arXiv:1811.02629).
""")


#
# MedSynthParameterNode
#


@parameterNodeWrapper
class MedSynthParameterNode:
    """Everything the user chooses, saved with the scene.

    Paths are ``pathlib.Path`` because the parameter node wrapper connects ``ctkPathLineEdit`` and
    ``ctkDirectoryButton`` only to pathlib types (an empty path reads as ``Path(".")``; see ``_isSet``).
    Spin box decimals and steps are set in the .ui file (as ``Decimals``/``SingleStep`` annotations they would
    be reported as unused by the wrapper's serializer).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    modelPath: Path
    device: Annotated[str, Choice(DEVICES)] = "auto"
    stages: Annotated[int, WithinRange(0, 10)] = 0
    flipTTA: bool = False
    dataDir: Path
    outputModelPath: Path
    runDir: Path
    iterations: Annotated[int, WithinRange(1, 10_000_000)] = 2000
    batchSize: Annotated[int, WithinRange(1, 4096)] = 32
    lrG: Annotated[float, WithinRange(0.0, 1.0)] = 5e-4
    lrD: Annotated[float, WithinRange(0.0, 1.0)] = 1e-4
    lambdaAdv: Annotated[float, WithinRange(0.0, 100.0)] = 0.05
    lambdaL2: Annotated[float, WithinRange(0.0, 100.0)] = 1.0
    lambdaGdl: Annotated[float, WithinRange(0.0, 100.0)] = 1.0
    trainStages: Annotated[int, WithinRange(1, 10)] = 3
    residual: bool = True
    trainDevice: Annotated[str, Choice(DEVICES)] = "auto"
    trainPrecision: Annotated[str, Choice(TRAIN_PRECISIONS)] = "auto"


def _isSet(path: Optional[Path]) -> bool:
    """Whether a path parameter holds a real choice (the wrapper's empty value is ``Path()``, i.e. ".")."""
    return path is not None and str(path) not in ("", ".")


#
# MedSynthWidget
#


class MedSynthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI: parameter node ↔ widgets, buttons, a QTimer polling the running job."""

    POLL_MS = 200

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[MedSynthModuleLogic] = None
        self._parameterNode: Optional[MedSynthParameterNode] = None
        self._parameterNodeGuiTag = None
        self._job: Optional[jobs.Job] = None
        self._jobKind: Optional[str] = None
        self._jobContext: Dict[str, Any] = {}
        self._trainingPlot: Optional[mrml.TrainingPlot] = None
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.connect("timeout()", self._onPollTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSynth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedSynthModuleLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.synthesizeButton.connect("clicked(bool)", self.onSynthesizeButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.loadT1ceButton.connect("clicked(bool)", self.onLoadT1ceButton)
        self.ui.startTrainingButton.connect("clicked(bool)", self.onStartTrainingButton)
        self.ui.stopTrainingButton.connect("clicked(bool)", self.onStopTrainingButton)
        self.ui.resumeTrainingButton.connect("clicked(bool)", self.onResumeTrainingButton)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self._updateModelDescription)

        self.initializeParameterNode()
        self._updateModelDescription()
        self._setBusy(False)

    def cleanup(self) -> None:
        """The application closes: never leave a child process behind."""
        self._timer.stop()
        if self._job is not None and self._job.running:
            self._job.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode: Optional[MedSynthParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        busy = self._job is not None and self._job.running
        p = self._parameterNode
        canSynthesize = bool(p and p.inputVolume) and not busy
        self.ui.synthesizeButton.enabled = canSynthesize
        self.ui.synthesizeButton.toolTip = (
            _("Synthesize a T2 volume from the selected T1ce volume") if canSynthesize
            else _("Select a T1ce volume (and wait for the running job to end)")
        )
        canTrain = bool(p and _isSet(p.dataDir) and _isSet(p.outputModelPath) and _isSet(p.runDir)) and not busy
        self.ui.startTrainingButton.enabled = canTrain
        self.ui.resumeTrainingButton.enabled = canTrain
        self.ui.startTrainingButton.toolTip = (
            _("Train a model on the prepared data folder") if canTrain
            else _("Choose the prepared data folder, the run folder and the output model file")
        )
        self.ui.cancelButton.enabled = busy and self._jobKind == "synthesize"
        self.ui.stopTrainingButton.enabled = busy and self._jobKind == "train"

    # ------------------------------------------------------------------ actions
    def onLoadT1ceButton(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Load T1ce volume"), "", _("Volumes (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd)")
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not load the T1ce volume."), waitCursor=True):
            node = self.logic.loadVolume(path)
            self._parameterNode.inputVolume = node
            slicer.util.setSliceViewerLayers(background=node, fit=True)

    def onSynthesizeButton(self) -> None:
        if not self._ensureDependencies():
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not start the synthesis."), waitCursor=True):
            modelPath = p.modelPath if _isSet(p.modelPath) else None
            job, context = self.logic.startSynthesis(
                p.inputVolume, modelPath=modelPath, stages=p.stages or None, device=p.device, flipTTA=p.flipTTA
            )
            context["outputVolume"] = p.outputVolume
            self._startPolling(job, "synthesize", context)

    def onCancelButton(self) -> None:
        if self._job is not None:
            self._setStatus(_("Cancelling…"))
            self._job.cancel()

    def onStartTrainingButton(self) -> None:
        self._startTraining(resume=False)

    def onResumeTrainingButton(self) -> None:
        self._startTraining(resume=True)

    def onStopTrainingButton(self) -> None:
        if self._job is not None:
            self._setStatus(_("Stopping training (the last checkpoint is kept; use Resume to continue)…"))
            self._job.cancel(timeout=30)

    def _startTraining(self, resume: bool) -> None:
        if not self._ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start training."), waitCursor=True):
            job = self.logic.startTraining(self._parameterNode, resume=resume)
            self._trainingPlot = mrml.TrainingPlot(slicer.mrmlScene)
            self.logic.showChart(self._trainingPlot.chart_node)
            self._startPolling(job, "train", {})

    def _ensureDependencies(self) -> bool:
        try:
            return self.logic.ensureDependencies(askConfirmation=True)
        except (RuntimeError, MedSynthError) as exc:
            slicer.util.errorDisplay(_("MedSynth needs Python packages that are not installed.") + "\n\n" + str(exc))
            return False

    # ------------------------------------------------------------------ job polling
    def _startPolling(self, job: jobs.Job, kind: str, context: Dict[str, Any]) -> None:
        self._job, self._jobKind, self._jobContext = job, kind, context
        self._setBusy(True)
        self._setStatus(_("Synthesizing…") if kind == "synthesize" else _("Training…"))
        self._timer.start()

    def _onPollTimer(self) -> None:
        if self._job is None:
            self._timer.stop()
            return
        for event in self._job.poll():
            self._handleEvent(event)

    def _handleEvent(self, event: Dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "progress":
            fraction = float(event.get("fraction") or 0.0)  # overall fraction, all stages together
            stages = event.get("stages")
            stage = int(event.get("stage", 0) or 0)  # 0-based
            if stages:
                self._setStatus(_("Synthesizing: stage {stage} of {stages}").format(stage=stage + 1, stages=stages))
            self.ui.progressBar.value = int(round(100 * max(0.0, min(1.0, fraction))))
        elif kind == "iteration":
            if self._trainingPlot is not None:
                self._trainingPlot.add_event(event)
            total = max(1, int(event.get("iterations") or 1))
            self.ui.progressBar.value = int(100 * int(event.get("iteration", 0)) / total)
            eta = event.get("eta_s")
            losses = event.get("losses") or {}
            text = _("Stage {stage}, iteration {it}/{total}, G loss {g:.4g}").format(
                stage=int(event.get("stage", 0)) + 1, it=event.get("iteration"), total=total,
                g=float(losses.get("g", float("nan"))),
            )
            if eta is not None:
                text += _(", about {minutes:.0f} min left").format(minutes=float(eta) / 60.0)
            self._setStatus(text)
        elif kind == "validation":
            if self._trainingPlot is not None:
                self._trainingPlot.add_event(event)
        elif kind == "log":
            logging.info(f"[medsynth {event.get('stream')}] {event.get('line')}")
        elif kind == "exit":
            self._onJobExit()

    def _onJobExit(self) -> None:
        self._timer.stop()
        job, kind, context = self._job, self._jobKind, self._jobContext
        self._job = None
        self._setBusy(False)
        if job.state == jobs.CANCELLED:
            self._setStatus(_("Cancelled."))
            self.logic.cleanupJob(context)
            return
        if job.state != jobs.FINISHED:
            self._setStatus(_("Failed."))
            self.logic.cleanupJob(context)
            slicer.util.errorDisplay(job.error_message or _("The process failed."), windowTitle=_("MedSynth"))
            return
        self.ui.progressBar.value = 100
        if kind == "synthesize":
            with slicer.util.tryWithErrorDisplay(_("Could not load the synthetic image."), waitCursor=True):
                outputNode = self.logic.finishSynthesis(context)
                self._parameterNode.outputVolume = outputNode
                self._setStatus(_("Done in {seconds:.0f} s.").format(seconds=job.elapsed_s))
        else:
            self._setStatus(_("Training finished: {path}").format(path=self._parameterNode.outputModelPath))
            self._parameterNode.modelPath = self._parameterNode.outputModelPath
            self._updateModelDescription()

    # ------------------------------------------------------------------ display helpers
    def _setBusy(self, busy: bool) -> None:
        self.ui.progressBar.visible = busy or self.ui.progressBar.value > 0
        if busy:
            self.ui.progressBar.value = 0
        self._checkCanApply()

    def _setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text
        slicer.app.processEvents()

    def _updateModelDescription(self, *args) -> None:
        p = self._parameterNode
        path = p.modelPath if p is not None and _isSet(p.modelPath) else None
        self.ui.modelDescriptionLabel.text = self.logic.modelDescription(path)


#
# MedSynthModuleLogic
#


class MedSynthModuleLogic(ScriptedLoadableModuleLogic):
    """Everything the widget does, usable from the Python console and tests without the GUI.

    Named ``MedSynthModuleLogic`` (not ``MedSynthLogic``) because ``MedSynthLogic`` is the core package.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> MedSynthParameterNode:
        return MedSynthParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ dependencies
    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Make torch and the packages in requirements.txt importable, asking the user first. Never at import time.

        torch comes from the PyTorch extension (it picks the wheel matching the GPU driver); the rest through
        ``slicer.packaging.pip_ensure`` (Slicer ≥ 5.10) or ``slicer.util.pip_install``, with numpy and SimpleITK
        pinned to the versions Slicer ships. Returns False when the user declines.
        """
        if not self._torchImportable():
            try:
                import PyTorchUtils
            except ImportError as exc:
                raise RuntimeError(
                    _("Install the 'PyTorch' extension from the Extensions Manager and restart Slicer.")
                ) from exc
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                if torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=">=2.0") is None:
                    return False
        requirements = self.requirementsPath()
        constraints = self._protectedConstraintsFile()
        try:
            import slicer.packaging as packaging
        except ImportError:
            packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            try:
                packaging.pip_ensure(
                    packaging.load_requirements(requirements),
                    constraints=constraints,
                    prompt_install=askConfirmation,
                    requester="MedSynth",
                )
            except RuntimeError:
                return False
            return True
        missing = self._missingRequirements(requirements)
        if not missing:
            return True
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _("MedSynth needs these Python packages, which will be downloaded and installed now:")
            + "\n" + "\n".join(missing)
        ):
            return False
        slicer.util.pip_install(["-c", str(constraints), *missing])
        return True

    @staticmethod
    def _torchImportable() -> bool:
        import importlib.util

        return importlib.util.find_spec("torch") is not None

    @staticmethod
    def requirementsPath() -> Path:
        """``Resources/requirements.txt``: installed next to the module's resources, or the source checkout's."""
        here = Path(__file__).resolve().parent
        packageParent = Path(core.__file__).resolve().parent.parent
        for candidate in (here / "Resources" / "requirements.txt", packageParent / "Resources" / "requirements.txt"):
            if candidate.is_file():
                return candidate
        raise RuntimeError(_("Resources/requirements.txt is missing from the MedSynth installation."))

    @staticmethod
    def _protectedConstraintsFile() -> Path:
        """A pip constraints file pinning Slicer's own numpy and SimpleITK, so installing never replaces them."""
        from importlib import metadata

        lines = []
        for name in PROTECTED_PACKAGES:
            try:
                lines.append(f"{name}=={metadata.version(name)}")
            except metadata.PackageNotFoundError:
                continue
        path = Path(tempfile.gettempdir()) / "MedSynth-constraints.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    @staticmethod
    def _missingRequirements(requirements: Path) -> List[str]:
        import importlib.util
        import re

        missing = []
        for line in requirements.read_text(encoding="utf-8").splitlines():
            spec = line.split("#", 1)[0].strip()
            if not spec:
                continue
            name = re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]
            module = {"scikit-image": "skimage"}.get(name, name.replace("-", "_"))
            if importlib.util.find_spec(module) is None:
                missing.append(spec)
        return missing

    # ------------------------------------------------------------------ models
    @staticmethod
    def modelDescription(modelPath: Optional[Path] = None) -> str:
        """One paragraph about a model file (default: the bundled one) from its header, for the GUI."""
        try:
            from MedSynthLogic import model_file

            path = Path(modelPath) if modelPath is not None else model_file.bundled_model_path()
            header = model_file.read_header(path)
        except (ImportError, MedSynthError, OSError) as exc:
            return _("No model information: {error}").format(error=str(exc))
        cfg = header.get("model_config", {}) or {}
        training = header.get("training", {}) or {}
        metrics = header.get("metrics", {}) or {}
        parts = [
            _("{name}: {source} → {target}, {stages} auto-context stage(s).").format(
                name=Path(path).name, source=cfg.get("source_name", "T1ce"), target=cfg.get("target_name", "T2"),
                stages=header.get("stages", cfg.get("stages", "?")),
            )
        ]
        data = training.get("data") or training.get("dataset")
        if data:
            parts.append(_("Trained on: {data}.").format(data=data if isinstance(data, str) else _summary(data)))
        if training.get("iterations"):
            parts.append(_("Iterations: {n}.").format(n=training["iterations"]))
        if metrics:
            parts.append(_("Validation: {metrics}.").format(metrics=_summary(metrics)))
        return " ".join(parts)

    # ------------------------------------------------------------------ volumes
    def loadVolume(self, path: str) -> vtkMRMLScalarVolumeNode:
        node = mrml.load_volume_file(slicer.mrmlScene, path)
        mrml.set_window_level(node)
        return node

    def synthesize(
        self,
        inputVolume: vtkMRMLScalarVolumeNode,
        outputVolume: Optional[vtkMRMLScalarVolumeNode] = None,
        modelPath: Optional[Path] = None,
        stages: Optional[int] = None,
        device: str = "auto",
        flipTTA: bool = False,
        showResult: bool = True,
    ) -> vtkMRMLScalarVolumeNode:
        """Synthesize in this process (blocking): for scripts and the self-test. The GUI uses ``startSynthesis``."""
        from MedSynthLogic import inference, model_file

        if inputVolume is None:
            raise ValueError(_("No input volume."))
        source = mrml.volume_from_node(inputVolume)
        model = model_file.load_model(Path(modelPath) if modelPath else model_file.bundled_model_path())
        result = inference.synthesize_volume(model, source, stages=stages, device=device, flip_tta=flipTTA)
        return self._storeResult(inputVolume, outputVolume, result, showResult)

    def startSynthesis(
        self,
        inputVolume: vtkMRMLScalarVolumeNode,
        modelPath: Optional[Path] = None,
        stages: Optional[int] = None,
        device: str = "auto",
        flipTTA: bool = False,
    ) -> tuple:
        """Write the input to a temporary file and start ``medsynth synthesize`` on it; returns (job, context)."""
        if inputVolume is None:
            raise ValueError(_("No input volume."))
        workDir = Path(tempfile.mkdtemp(prefix="MedSynth-", dir=self._temporaryRoot()))
        sourcePath = mrml.save_volume_node(inputVolume, workDir / "source_t1ce.nii.gz")
        outputPath = workDir / "synthetic_t2.nii.gz"
        args: List[Any] = ["synthesize", sourcePath, outputPath, "--device", device, "--progress", "json"]
        if modelPath:
            args += ["--model", modelPath]
        if stages:
            args += ["--stages", int(stages)]
        if flipTTA:
            args.append("--flip-tta")
        job = self._startJob(args)
        return job, {"inputVolume": inputVolume, "outputPath": outputPath, "workDir": workDir}

    def finishSynthesis(self, context: Dict[str, Any]) -> vtkMRMLScalarVolumeNode:
        """Load the child's output onto the input's exact grid, show it side by side, remove the temporary files."""
        from MedSynthLogic.volume_io import read_volume

        try:
            result = read_volume(context["outputPath"])
            return self._storeResult(context["inputVolume"], context.get("outputVolume"), result, True)
        finally:
            self.cleanupJob(context)

    def _storeResult(self, inputVolume, outputVolume, result, showResult: bool) -> vtkMRMLScalarVolumeNode:
        name = f"{inputVolume.GetName()} {SYNTHETIC_SUFFIX}"
        if outputVolume is None:
            outputVolume = mrml.node_from_volume(slicer.mrmlScene, result, name, reference=inputVolume)
        else:
            mrml.update_node_from_volume(outputVolume, result, reference=inputVolume)
            outputVolume.CreateDefaultDisplayNodes()
        mrml.set_window_level(outputVolume)
        if showResult:
            mrml.show_side_by_side(slicer.mrmlScene, inputVolume, outputVolume)
            layoutManager = slicer.app.layoutManager() if hasattr(slicer.app, "layoutManager") else None
            if layoutManager is not None:
                layoutManager.resetSliceViews()
        return outputVolume

    @staticmethod
    def cleanupJob(context: Dict[str, Any]) -> None:
        import shutil

        workDir = context.get("workDir")
        if workDir:
            shutil.rmtree(workDir, ignore_errors=True)

    # ------------------------------------------------------------------ training
    def startTraining(self, parameters: MedSynthParameterNode, resume: bool = False) -> jobs.Job:
        """Start ``medsynth train`` with the GUI's settings (JSON progress on stdout).

        Loss weights and residual learning are architecture settings (``ModelConfig.loss``,
        ``GeneratorConfig.residual``), so they travel in a ``--model-config`` JSON file; the rest are train options.
        """
        from MedSynthLogic.config import GeneratorConfig, LossConfig, ModelConfig, to_dict

        p = parameters
        if not (_isSet(p.dataDir) and _isSet(p.outputModelPath) and _isSet(p.runDir)):
            raise ValueError(_("Choose the prepared data folder, the run folder and the output model file."))
        modelConfig = ModelConfig(
            generator=GeneratorConfig(residual=bool(p.residual)),
            loss=LossConfig(lambda_adv=p.lambdaAdv, lambda_l2=p.lambdaL2, lambda_gdl=p.lambdaGdl),
            stages=p.trainStages,
        )
        configDir = Path(tempfile.mkdtemp(prefix="MedSynth-train-", dir=self._temporaryRoot()))
        configPath = configDir / "model_config.json"
        configPath.write_text(json.dumps(to_dict(modelConfig), indent=2), encoding="utf-8")
        args: List[Any] = [
            "train",
            "--data", p.dataDir,
            "--out", p.outputModelPath,
            "--run-dir", p.runDir,
            "--model-config", configPath,
            "--stages", p.trainStages,
            "--iterations", p.iterations,
            "--batch-size", p.batchSize,
            "--lr-g", p.lrG,
            "--lr-d", p.lrD,
            "--device", p.trainDevice,
            "--precision", p.trainPrecision,
            "--progress", "json",
        ]
        if resume:
            args.append("--resume")
        return self._startJob(args)

    def showChart(self, chartNode) -> None:
        """Switch to a layout with a plot view showing the training chart."""
        plotsModule = getattr(slicer.modules, "plots", None)
        if plotsModule is not None:
            plotsModule.logic().ShowChartInLayout(chartNode)

    # ------------------------------------------------------------------ processes
    def _startJob(self, args: List[Any]) -> jobs.Job:
        env = jobs.child_environment(base=slicer.util.startupEnvironment())
        return jobs.Job(jobs.python_command(args), env=env).start()

    @staticmethod
    def _temporaryRoot() -> Optional[str]:
        app = getattr(slicer, "app", None)
        return getattr(app, "temporaryPath", None) or None


def _summary(values: Any) -> str:
    if isinstance(values, dict):
        return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
                         if not isinstance(v, (dict, list)))
    return str(values)


#
# MedSynthTest
#


class MedSynthTest(ScriptedLoadableModuleTest):
    """Self-test in a real Slicer: phantom T1ce → bundled model → synthetic T2 on the same grid, good enough."""

    PSNR_FLOOR_DB = 18.0

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SynthesizePhantom()
        self.setUp()
        self.test_ParameterNode()

    def test_SynthesizePhantom(self):
        import numpy as np

        from MedSynthLogic.phantom import make_phantom

        self.delayDisplay("Synthesizing the phantom with the bundled model")
        phantom = make_phantom(shape=(64, 72, 64), spacing=(1.0, 1.0, 1.0), seed=0)
        ijkToRas = mrml.ijk_to_ras_from_geometry(phantom.t1ce.spacing, phantom.t1ce.origin, phantom.t1ce.direction)
        source = slicer.util.addVolumeFromArray(phantom.t1ce.array, ijkToRAS=ijkToRas, name="phantom T1ce")

        logic = MedSynthModuleLogic()
        self.assertTrue(logic._torchImportable(), "torch is needed for the self-test")
        output = logic.synthesize(source, device="cpu")

        self.assertEqual(output.GetName(), f"phantom T1ce {SYNTHETIC_SUFFIX}")
        np.testing.assert_array_equal(mrml.node_ijk_to_ras(output), mrml.node_ijk_to_ras(source))
        predicted = slicer.util.arrayFromVolume(output).astype(np.float64)
        self.assertEqual(predicted.shape, phantom.t2.array.shape)
        self.assertTrue(np.all(np.isfinite(predicted)))

        mask = np.asarray(phantom.mask, dtype=bool)
        target = phantom.t2.array.astype(np.float64)
        scale = float(np.percentile(target[mask], 99.5))
        mse = float(np.mean(((predicted[mask] - target[mask]) / scale) ** 2))
        psnr = 10.0 * np.log10(1.0 / max(mse, 1e-12))
        self.delayDisplay(f"PSNR inside the brain: {psnr:.2f} dB")
        self.assertGreater(psnr, self.PSNR_FLOOR_DB)

        layout = mrml.find_layout_node(slicer.mrmlScene, create=False)
        self.assertEqual(layout.GetViewArrangement(), slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        self.assertEqual(mrml.slice_composite_node(slicer.mrmlScene, "Yellow").GetBackgroundVolumeID(), output.GetID())
        self.delayDisplay("Test passed")

    def test_ParameterNode(self):
        logic = MedSynthModuleLogic()
        p = logic.getParameterNode()
        p.device = "cpu"
        p.stages = 2
        p.modelPath = Path("/tmp/some model.safetensors")
        again = logic.getParameterNode()
        self.assertEqual((again.device, again.stages, again.modelPath), ("cpu", 2, Path("/tmp/some model.safetensors")))
        self.assertFalse(_isSet(Path()))

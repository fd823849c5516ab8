"""MRML scene helpers: nodes out to files for the worker, the worker's files back into reused nodes.

Outputs are loaded into the *same* nodes on every run (the parameter node keeps references to them), so re-running
replaces results instead of flooding the scene. Nothing here touches widgets.
"""

from __future__ import annotations

import re
from pathlib import Path

import slicer
import vtk
from slicer import (vtkMRMLNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode,
                    vtkMRMLTransformableNode, vtkMRMLVolumeNode)

from MedDeepRecogLib.slicer_views import (apply_heatmap_display, apply_heatmap_threshold,
                                          apply_segmentation_display, remove_node_and_helpers)

# The display settings (Inferno heatmap, threshold, segment outlines) live in MedDeepRecogLib.slicer_views, so
# the headless renders of the tests and of `meddeeprecog demo --slicer-views` show exactly what the panel sets.


def safeFileName(name: str) -> str:
    """A node name as a portable file name (the worker names its outputs after the input file)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "volume"


def exportVolume(volumeNode: vtkMRMLVolumeNode, folder: Path) -> Path:
    """Write ``volumeNode`` to ``folder/<name>.nrrd`` (geometry included) without changing its storage node."""
    path = Path(folder) / f"{safeFileName(volumeNode.GetName())}.nrrd"
    path.parent.mkdir(parents=True, exist_ok=True)
    # properties={}: exportNode's default dict is shared between calls and keeps the last call's fileFormat
    if not slicer.util.exportNode(volumeNode, str(path), properties={}):
        raise RuntimeError(f"{path}: could not write volume '{volumeNode.GetName()}'")
    return path


def exportSegmentation(segmentationNode: vtkMRMLSegmentationNode, folder: Path) -> Path:
    """Write ``segmentationNode`` to ``folder/<name>.seg.nrrd`` (segment names and colours included)."""
    path = Path(folder) / f"{safeFileName(segmentationNode.GetName())}.seg.nrrd"
    if not slicer.util.exportNode(segmentationNode, str(path), properties={}):
        raise RuntimeError(f"{path}: could not write segmentation '{segmentationNode.GetName()}'")
    return path


def exportSegmentLabelmap(segmentationNode: vtkMRMLSegmentationNode, segmentId: str, folder: Path) -> Path:
    """Write the one segment ``segmentId`` of ``segmentationNode`` to ``folder/<segmentation>_<segment>.nrrd`` as a
    binary label map (1 in the segment, 0 elsewhere; other segments, even overlapping ones, left out), as Slicer's
    Export to label map writes it: on the segmentation's reference geometry, extended (same voxel size and
    directions) to hold the whole segment, under its parent transform.

    The reference geometry is the grid the segment was drawn on (the source volume's voxels, or their oversampling):
    the segment goes out voxel for voxel, resampled nowhere, and the core cuts the model's field of view on that grid
    keeping its voxel size, exactly as for a label map node on that grid. A segment that reaches beyond the reference
    geometry (one set by "Specify geometry", or a segmentation imported on another grid) is not cut at its edge: the
    grid grows to hold it, so no part of the structure is left out, and one wholly outside is not read as empty.
    (A cut to the segment's own extent would not do: the core keeps an input no larger than the model's field as it
    is, centred on its box, not on the structure's centre of mass.) The temporary label map node, and the colour
    table the export makes for it, are removed.

    Raises:
        ValueError: the segment holds no voxel (nothing to classify).
        RuntimeError: the export or the write failed.
    """
    segmentName = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
    which = f"the segment '{segmentName}' of '{segmentationNode.GetName()}'"
    colorsBefore = {node.GetID() for node in slicer.util.getNodesByClass("vtkMRMLColorNode")}
    labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode",
                                                  f"{segmentationNode.GetName()} {segmentName}")
    try:
        segmentIds = vtk.vtkStringArray()
        segmentIds.InsertNextValue(segmentId)
        extent = slicer.vtkSegmentation.EXTENT_UNION_OF_EFFECTIVE_SEGMENTS_AND_REFERENCE_GEOMETRY
        if not slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(segmentationNode, segmentIds,
                                                                                 labelmap, None, extent):
            raise RuntimeError(f"could not export {which} as a label map")
        image = labelmap.GetImageData()
        if image is None or 0 in image.GetDimensions() or not slicer.util.arrayFromVolume(labelmap).any():
            raise ValueError(f"{which} is empty: draw the structure in it (Segment Editor), or choose another "
                             "segment.")
        return exportVolume(labelmap, folder)
    finally:
        removeNodeAndHelpers(labelmap)
        for node in slicer.util.getNodesByClass("vtkMRMLColorNode"):  # the export's colour table for the label map
            if node.GetID() not in colorsBefore:
                slicer.mrmlScene.RemoveNode(node)


def loadVolumeInto(path: Path, targetNode: vtkMRMLScalarVolumeNode | None, name: str) -> vtkMRMLScalarVolumeNode:
    """Load a volume file into ``targetNode`` (voxels and geometry replaced), or a new node when it is ``None``.

    The file is read into a temporary node that is then removed with its display and storage nodes: the target
    never keeps a storage node pointing into the worker's exchange folder (deleted after the run), and it is
    marked modified, so Slicer's Save dialog writes it with the scene."""
    loaded = slicer.util.loadVolume(str(path), {"name": name, "show": False})
    if targetNode is None or not slicer.mrmlScene.IsNodePresent(targetNode):
        targetNode = slicer.mrmlScene.AddNewNodeByClass(loaded.GetClassName(), name)
    targetNode.SetName(name)
    targetNode.SetAndObserveImageData(loaded.GetImageData())
    targetNode.CopyOrientation(loaded)  # IJK-to-RAS: origin, spacing, directions
    removeNodeAndHelpers(loaded)
    targetNode.CreateDefaultDisplayNodes()
    targetNode.StorableModified()
    return targetNode


def removeNodeAndHelpers(node: vtkMRMLNode) -> None:
    """Remove ``node`` and its display and storage nodes (``RemoveNode`` alone leaves those in the scene, and
    every saved ``.mrml`` would list them)."""
    remove_node_and_helpers(slicer.mrmlScene, node)


def replaceSegments(targetNode: vtkMRMLSegmentationNode, path: Path,
                    referenceVolume: vtkMRMLVolumeNode | None = None) -> list[str]:
    """Copy every segment of the ``.seg.nrrd`` at ``path`` into ``targetNode``, replacing same-named segments.

    Returns the names of the copied segments. Segments of other origins (e.g. a mask from Preview) are kept.
    """
    loaded = slicer.util.loadSegmentation(str(path), {"name": "MedDeepRecog temporary"})
    try:
        source = loaded.GetSegmentation()
        names = []
        for segmentId in list(source.GetSegmentIDs()):
            name = source.GetSegment(segmentId).GetName()
            removeSegmentByName(targetNode, name)
            targetNode.GetSegmentation().CopySegmentFromSegmentation(source, segmentId)
            names.append(name)
    finally:
        removeNodeAndHelpers(loaded)
    if referenceVolume is not None:
        targetNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
    return names


def removeSegmentByName(segmentationNode: vtkMRMLSegmentationNode, name: str) -> None:
    segmentation = segmentationNode.GetSegmentation()
    segmentId = segmentation.GetSegmentIdBySegmentName(name)
    if segmentId:
        segmentation.RemoveSegment(segmentId)


def setSegmentFromMask(segmentationNode: vtkMRMLSegmentationNode, name: str, mask, color: tuple[float, float, float],
                       referenceVolume: vtkMRMLVolumeNode) -> str:
    """Put a ``(K, J, I)`` numpy mask on ``referenceVolume``'s grid into the segment ``name`` (created or replaced)."""
    removeSegmentByName(segmentationNode, name)
    segmentId = segmentationNode.GetSegmentation().AddEmptySegment(name, name, list(color))
    # what slicer.util.updateSegmentBinaryLabelmapFromArray does, but its temporary labelmap is removed with its
    # display node (that function leaves one behind on every call)
    labelmap = slicer.modules.volumes.logic().CreateAndAddLabelVolume(referenceVolume, "__temp__")
    try:
        slicer.util.updateVolumeFromArray(labelmap, (mask > 0).astype("uint8"))
        segmentIds = vtk.vtkStringArray()
        segmentIds.InsertNextValue(segmentId)
        if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentationNode,
                                                                                     segmentIds):
            raise RuntimeError(f"could not import the mask into segment '{name}'")
    finally:
        removeNodeAndHelpers(labelmap)
    return segmentId


def showSegmentationIn3D(segmentationNode: vtkMRMLSegmentationNode) -> None:
    """Closed-surface representation (what "Show 3D" displays) with outlines and a translucent 2D fill."""
    apply_segmentation_display(segmentationNode)


#: The probability column's header when the scan is outside the model's domain (as the command line says it).
NOT_A_FINDING = "model output, not a finding"


#: The probability column's header otherwise: the scan's class probabilities (not the label's confidence, which the
#: result line's confidence is), and when the label is "uncertain" (no class reported) it says so, as the result line
#: does.
SCAN_PROBABILITY = "scan probability"
UNCERTAIN_PROBABILITY = "scan probability (uncertain: no class reported)"


def updateProbabilityTable(tableNode: vtkMRMLTableNode, probabilities: list[tuple[str, float]],
                           outOfDomain: bool = False, uncertain: bool = False, confidence: float | None = None,
                           basis: str = "", confidenceBasis: str = "", resultOf: str = "", model: str = "",
                           subject: str = "scan") -> None:
    """Fill ``tableNode`` with columns ``class`` and ``probability`` (rows in the given order) and, within the domain,
    ``result``: on the top class's row whether it is reported or uncertain, with the label's ``confidence`` (the
    result line's confidence; ``confidenceBasis``: how the worker made it). The probability column is headed
    :data:`SCAN_PROBABILITY` (``basis`` as its description), :data:`UNCERTAIN_PROBABILITY` when ``uncertain``, and
    ``outOfDomain``: :data:`NOT_A_FINDING`, so the numbers are not read as the scan's diagnosis. The class column
    names the input the results are of (``resultOf``) and the ``model`` (:func:`nameSource`). ``subject`` is what
    the figures are of: ``"scan"``, ``"slice"`` (one slice classified: "slice probability", never read as the scan's),
    ``"segment"`` or ``"label map"`` (a mask model's structure)."""
    classes = vtk.vtkStringArray()
    classes.SetName("class")
    probs = vtk.vtkDoubleArray()
    probs.SetName("probability")
    results = vtk.vtkStringArray()
    results.SetName("result")
    for row, (name, p) in enumerate(probabilities):
        classes.InsertNextValue(name)
        probs.InsertNextValue(float(p))
        said = "uncertain: most likely" if uncertain else "reported"
        results.InsertNextValue("" if row else f"{said}" + ("" if confidence is None else
                                                            f", confidence {float(confidence):.2f}"))
    tableNode.RemoveAllColumns()
    tableNode.AddColumn(classes)
    tableNode.AddColumn(probs)
    if outOfDomain:
        tableNode.SetColumnTitle("probability", NOT_A_FINDING)
        tableNode.SetColumnDescription("probability", "the scan is outside this model's domain: no class is "
                                                      "reported, these are the network's numbers only")
    else:
        tableNode.AddColumn(results)
        title = (UNCERTAIN_PROBABILITY if uncertain else SCAN_PROBABILITY).replace("scan", subject, 1)
        tableNode.SetColumnTitle("probability", title)
        scanWords = "the scan's probability"
        if subject != "scan":  # the core's words name the scan: this table's figures are the slice's or structure's
            basis = basis.replace(scanWords, f"the {subject}'s probability")
            confidenceBasis = confidenceBasis.replace(scanWords, f"the {subject}'s probability")
        tableNode.SetColumnDescription("probability", basis or f"the model's probability of each class for the "
                                                               f"{subject}")
        tableNode.SetColumnTitle("result", "result (confidence of the label)")
        tableNode.SetColumnDescription("result", confidenceBasis or f"the top class's probability for the {subject}")
    nameSource(tableNode, "class", resultOf, model)
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    tableNode.Modified()


def nameSource(tableNode: vtkMRMLTableNode, column: str, resultOf: str, model: str, title: str = "",
               description: str = "") -> None:
    """Head ``column`` (a result table's first) with what the results are of: ``"class ('CT', body-region@1.0.0)"``
    for ``resultOf`` the input (``'CT'``, or ``segment 'adrenal R' of 'labels'``) and ``model`` its id@version, so a
    table read beside another scan says whose it is (``title``: the column's own words, default its name); its
    description says it in words after the column's own ``description``. Nothing without ``resultOf``."""
    if not resultOf:
        return
    tableNode.SetColumnTitle(column, f"{title or column} ({resultOf}" + (f", {model})" if model else ")"))
    words = f"results of {resultOf}" + (f" by the model {model}" if model else "")
    tableNode.SetColumnDescription(column, f"{description}; {words}" if description else words)


def updateSegmentLabelTable(tableNode: vtkMRMLTableNode, rows: list[dict], classNames: list[str],
                            resultOf: str = "", model: str = "") -> None:
    """Fill ``tableNode`` with columns ``segment``, ``label`` and one probability column per class; the segment column
    names the scan (``resultOf``) and the ``model`` (:func:`nameSource`)."""
    segments, labels = vtk.vtkStringArray(), vtk.vtkStringArray()
    segments.SetName("segment")
    labels.SetName("label")
    columns = []
    for name in classNames:
        column = vtk.vtkDoubleArray()
        column.SetName(f"p({name})")
        columns.append(column)
    for row in rows:
        segments.InsertNextValue(str(row["segment"]))
        labels.InsertNextValue(str(row["label"]))
        for name, column in zip(classNames, columns):
            column.InsertNextValue(float(row["probabilities"].get(name, 0.0)))
    tableNode.RemoveAllColumns()
    for column in (segments, labels, *columns):
        tableNode.AddColumn(column)
    nameSource(tableNode, "segment", resultOf, model)
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    tableNode.Modified()


def sliceVote(record: dict) -> str:
    """Whether a per-slice record counted in the scan's result (the JSON's ``voted`` and ``in_domain``): ``""``
    when the record does not say."""
    if record.get("voted") is not False:
        return "voted" if record.get("voted") is True else ""
    return "not voting: outside the model's domain" if record.get("in_domain") is False else "not voting"


def updateSliceTable(tableNode: vtkMRMLTableNode, records: list[dict], resultOf: str = "", model: str = "") -> None:
    """Per-slice results of a 2D model: columns ``index``, ``position_mm`` (superior coordinate S of the slice,
    the red view's offset), ``label``, ``probability`` and ``vote`` (:func:`sliceVote`: a slice outside the model's
    domain, or otherwise left out, is no part of the scan's result). ``position_mm`` falls back to the record's
    ``lps_mm[2]`` (S is the same number in LPS and RAS). The index column names the scan (``resultOf``) and the
    ``model`` (:func:`nameSource`): ``"slice from inferior ('CT', body-region@1.0.0)"``."""
    index, position, label, probability, vote = (vtk.vtkIntArray(), vtk.vtkDoubleArray(), vtk.vtkStringArray(),
                                                 vtk.vtkDoubleArray(), vtk.vtkStringArray())
    for array, name in ((index, "index"), (position, "position_mm"), (label, "label"), (probability, "probability"),
                        (vote, "vote")):
        array.SetName(name)
    for rec in records:
        mm = rec.get("position_mm")
        if mm is None and isinstance(rec.get("lps_mm"), (list, tuple)) and len(rec["lps_mm"]) == 3:
            mm = rec["lps_mm"][2]
        index.InsertNextValue(int(rec.get("index", 0)))
        position.InsertNextValue(float("nan") if mm is None else float(mm))
        label.InsertNextValue(str(rec.get("label", "")))
        probability.InsertNextValue(float(rec.get("probability", float("nan"))))
        vote.InsertNextValue(sliceVote(rec))
    tableNode.RemoveAllColumns()
    for array in (index, position, label, probability, vote):
        tableNode.AddColumn(array)
    # the index counts axial slices from the most inferior, which is not the volume's own K when K runs downwards:
    # the header says which, and position_mm is the red view's offset
    tableNode.SetColumnTitle("index", "slice from inferior")
    indexWords = "axial slice counted from the most inferior (0 = lowest), not the volume's K index"
    tableNode.SetColumnDescription("index", indexWords)
    tableNode.SetColumnTitle("position_mm", "S (mm)")
    tableNode.SetColumnDescription("position_mm", "superior coordinate of the slice centre: the red view's offset")
    tableNode.SetColumnTitle("vote", "counted in the result")
    tableNode.SetColumnDescription("vote", "whether the slice voted in the scan's result; a slice outside the "
                                           "model's domain did not, and its label is no finding")
    nameSource(tableNode, "index", resultOf, model, title="slice from inferior", description=indexWords)
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    tableNode.Modified()


def slicePositionOfRow(tableNode: vtkMRMLTableNode, row: int) -> float | None:
    """``position_mm`` of a row of :func:`updateSliceTable`'s table (``None`` when unknown)."""
    if not tableNode or not 0 <= row < tableNode.GetNumberOfRows():
        return None
    value = float(tableNode.GetCellText(row, 1) or "nan")
    return None if value != value else value


def readTableColumns(tableNode: vtkMRMLTableNode, first: int = 0, second: int = 1) -> list[tuple[str, str]]:
    """The text of two columns, row by row (e.g. the segment → class table)."""
    return [(tableNode.GetCellText(row, first), tableNode.GetCellText(row, second))
            for row in range(tableNode.GetNumberOfRows())]


def segmentNames(segmentationNode: vtkMRMLSegmentationNode) -> list[str]:
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetSegment(i).GetName() for i in segmentation.GetSegmentIDs()]


def segmentItems(segmentationNode: vtkMRMLSegmentationNode) -> list[tuple[str, str]]:
    """``[(segment ID, segment name), ...]`` in the segmentation's order."""
    segmentation = segmentationNode.GetSegmentation()
    return [(i, segmentation.GetSegment(i).GetName()) for i in segmentation.GetSegmentIDs()]


def syncClassMapTable(tableNode: vtkMRMLTableNode, segmentationNode: vtkMRMLSegmentationNode) -> bool:
    """Refill the segment → class table when its segment column no longer lists the segmentation's segments (added,
    removed or renamed), keeping the classes of segments that stay; ``True`` if it was refilled."""
    listed = [segment for segment, _ in readTableColumns(tableNode)] if tableNode.GetNumberOfColumns() >= 2 else None
    if listed == segmentNames(segmentationNode):
        return False
    fillClassMapTable(tableNode, segmentationNode)
    return True


def fillClassMapTable(tableNode: vtkMRMLTableNode, segmentationNode: vtkMRMLSegmentationNode) -> None:
    """One row per segment: ``segment`` and ``class`` (kept from earlier edits, else the segment's name)."""
    previous = {segment: cls for segment, cls in readTableColumns(tableNode)} if tableNode.GetNumberOfColumns() >= 2 \
        else {}
    names = segmentNames(segmentationNode)
    segmentColumn = vtk.vtkStringArray()
    segmentColumn.SetName("segment")
    classColumn = vtk.vtkStringArray()
    classColumn.SetName("class")
    for name in names:
        segmentColumn.InsertNextValue(name)
        classColumn.InsertNextValue(previous.get(name, name))
    tableNode.RemoveAllColumns()
    tableNode.AddColumn(segmentColumn)
    tableNode.AddColumn(classColumn)
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    tableNode.Modified()


def showHeatmap(heatmapNode: vtkMRMLScalarVolumeNode, backgroundNode: vtkMRMLVolumeNode | None, threshold: float,
                opacity: float, title: str = "Heatmap") -> None:
    """Heatmap as the foreground layer: Inferno colours over 0..1, values below ``threshold`` transparent,
    with a colour legend in the slice views titled ``title`` (the panel names the input and the model there);
    ``backgroundNode`` as the background (``None``: the views keep theirs, e.g. the scan under a label map that was
    classified)."""
    heatmapNode.CreateDefaultDisplayNodes()
    apply_heatmap_display(heatmapNode.GetDisplayNode(), threshold)
    slicer.util.setSliceViewerLayers(background="keep-current" if backgroundNode is None else backgroundNode,
                                     foreground=heatmapNode, foregroundOpacity=opacity)
    legend = slicer.modules.colors.logic().AddDefaultColorLegendDisplayNode(heatmapNode)
    if legend is not None:
        legend.SetTitleText(title)
        legend.SetVisibility(True)


def updateHeatmapDisplay(heatmapNode: vtkMRMLScalarVolumeNode, threshold: float, opacity: float | None = None) -> None:
    """Apply the transparency threshold (and, if given, the foreground opacity of the slice views)."""
    displayNode = heatmapNode.GetDisplayNode()
    if displayNode is not None:
        apply_heatmap_threshold(displayNode, threshold)  # below it (and zero: "no evidence") transparent
    if opacity is not None:
        slicer.util.setSliceViewerLayers(foregroundOpacity=opacity)


def hideHeatmap(heatmapNode: vtkMRMLScalarVolumeNode) -> None:
    """Take ``heatmapNode`` out of every slice view's foreground and hide its colour legend; the node stays."""
    heatmapId = heatmapNode.GetID()
    for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
        if composite.GetForegroundVolumeID() == heatmapId:
            composite.SetForegroundVolumeID(None)
    for i in range(heatmapNode.GetNumberOfDisplayNodes()):
        display = heatmapNode.GetNthDisplayNode(i)
        if display is not None and display.IsA("vtkMRMLColorLegendDisplayNode"):
            display.SetVisibility(False)


def hideSegmentation(segmentationNode: vtkMRMLSegmentationNode) -> None:
    """Hide ``segmentationNode`` in the views (2D and 3D); the node and its segments stay."""
    display = segmentationNode.GetDisplayNode()
    if display is not None:
        display.SetVisibility(False)


def placeUnderStudy(node: vtkMRMLNode, referenceNode: vtkMRMLTransformableNode) -> None:
    """Put ``node`` next to ``referenceNode`` in the subject hierarchy (same study/patient folder); a volume or
    segmentation also follows the reference's transform so the overlay stays aligned."""
    shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
    parent = shNode.GetItemParent(shNode.GetItemByDataNode(referenceNode))
    shNode.SetItemParent(shNode.GetItemByDataNode(node), parent)
    transformable = vtkMRMLTransformableNode.SafeDownCast(node)  # tables have no transform
    if transformable is not None:
        transformable.SetAndObserveTransformNodeID(referenceNode.GetTransformNodeID())


#: Node reference from an output that holds one scan's results (its segmentation, its per-slice table) to that scan.
SCAN_REFERENCE_ROLE = "MedDeepRecogScan"


def scanOf(node: vtkMRMLNode | None) -> str | None:
    """The ID of the scan whose results ``node`` holds (:func:`markScan`), or ``None``."""
    if node is None or not slicer.mrmlScene.IsNodePresent(node):
        return None
    return node.GetNodeReferenceID(SCAN_REFERENCE_ROLE) or None


def markScan(node: vtkMRMLNode, volumeNode: vtkMRMLVolumeNode) -> None:
    """Record that ``node`` holds ``volumeNode``'s results (a node reference: saved with the scene, and kept when a
    loaded scene's node IDs change)."""
    node.SetNodeReferenceID(SCAN_REFERENCE_ROLE, volumeNode.GetID())


def outputSegmentationOf(volumeNode: vtkMRMLVolumeNode | vtkMRMLSegmentationNode,
                         current: vtkMRMLSegmentationNode | None = None) -> vtkMRMLSegmentationNode:
    """The output segmentation of ``volumeNode``: each scan has its own, so one scan's segments (organs, a body
    mask, a hot region) never stand in another's. ``current`` if it is that scan's, else the scene's segmentation
    marked for it, else a new one, named ``"<scan> segmentations"``. The other scans' output segmentations are hidden
    (each lies where its own scan is, which may be where this one is), except ``volumeNode`` itself: a segmentation
    classified by a mask model (its hot region is no segment of it), which may be another scan's output."""
    scanId = volumeNode.GetID()
    outputs = [node for node in slicer.util.getNodesByClass("vtkMRMLSegmentationNode") if scanOf(node)]
    node = current if scanOf(current) == scanId else next((n for n in outputs if scanOf(n) == scanId), None)
    if node is None:
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volumeNode.GetName()} segmentations")
        markScan(node, volumeNode)
    node.SetName(f"{volumeNode.GetName()} segmentations")
    if volumeNode.IsA("vtkMRMLVolumeNode"):  # a segmentation input: the hot region brings the heatmap's grid
        node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    node.CreateDefaultDisplayNodes()
    node.SetDisplayVisibility(True)
    for other in outputs:
        if other is not node and scanOf(other) != scanId and other.GetID() != scanId:
            other.SetDisplayVisibility(False)
    return node


def getOrCreateNode(node, className: str, name: str):
    """``node`` if it is still in the scene, renamed ``name`` (an output reused for another scan takes that scan's
    name), else a new ``className`` node called ``name``."""
    if node is not None and slicer.mrmlScene.IsNodePresent(node):
        node.SetName(name)
        return node
    return slicer.mrmlScene.AddNewNodeByClass(className, name)
